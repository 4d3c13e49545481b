//! The memory planner: places every activation buffer of a network in one arena so
//! that buffers alive at the same time never overlap, keeping the peak small.
//!
//! Liveness is counted in steps: step 0 writes the input image, layer `k` runs at
//! step `k + 1`. A buffer is live from the step that writes it to the last step that
//! reads it; tensors read after the run (logits, features) live to the end. Buffers
//! are placed greedily, largest first, each at the lowest aligned offset that does not
//! collide with an already placed buffer whose lifetime intersects its own (the
//! strategy of TFLite Micro's `GreedyMemoryPlanner`). One in-place case is planned
//! on top: a convolution adding an identity residual whose last reader it is writes
//! its output over that residual (see [`tinyres_core::Residual`]), which is what keeps
//! ResNet-8's int8 peak at two 32×32×16 buffers.

/// One buffer to place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferRequest {
    /// Bytes.
    pub size: usize,
    /// Step that writes it.
    pub first_step: usize,
    /// Last step that reads it.
    pub last_step: usize,
}

/// Offsets chosen for a list of buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Offset of each buffer, in request order.
    pub offsets: Vec<usize>,
    /// Bytes the arena needs: the highest end of any buffer.
    pub peak: usize,
}

/// Places `requests` in one arena, every offset a multiple of `align` (a power of two).
pub fn plan_buffers(requests: &[BufferRequest], align: usize) -> MemoryPlan {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| {
        (
            core::cmp::Reverse(requests[i].size),
            requests[i].first_step,
            i,
        )
    });
    let mut offsets = vec![usize::MAX; requests.len()];
    let mut placed: Vec<usize> = Vec::new();
    for &i in &order {
        let r = requests[i];
        let mut blockers: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| {
                let o = requests[j];
                o.first_step <= r.last_step && r.first_step <= o.last_step
            })
            .map(|&j| (offsets[j], offsets[j] + requests[j].size))
            .collect();
        blockers.sort_unstable();
        let mut candidate = 0;
        for (start, end) in blockers {
            if candidate + r.size <= start {
                break;
            }
            candidate = candidate.max(align_up(end, align));
        }
        offsets[i] = candidate;
        placed.push(i);
    }
    let peak = requests
        .iter()
        .zip(&offsets)
        .map(|(r, &o)| o + r.size)
        .max()
        .unwrap_or(0);
    MemoryPlan { offsets, peak }
}

/// `n` rounded up to a multiple of `align` (a power of two).
pub fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(size: usize, first_step: usize, last_step: usize) -> BufferRequest {
        BufferRequest {
            size,
            first_step,
            last_step,
        }
    }

    #[test]
    fn disjoint_lifetimes_share_memory() {
        let plan = plan_buffers(&[req(100, 0, 1), req(100, 2, 3)], 16);
        assert_eq!(plan.offsets, [0, 0]);
        assert_eq!(plan.peak, 100);
    }

    #[test]
    fn overlapping_lifetimes_do_not_overlap_in_memory() {
        let plan = plan_buffers(&[req(100, 0, 1), req(50, 1, 2), req(30, 2, 3)], 16);
        assert_eq!(plan.offsets, [0, 112, 0]);
        assert_eq!(plan.peak, 162);
    }

    #[test]
    fn fills_gaps_between_placed_buffers() {
        let plan = plan_buffers(
            &[req(64, 0, 3), req(64, 2, 3), req(32, 0, 1), req(16, 1, 3)],
            16,
        );
        // 64@0, 64@64 (overlaps first), 32 overlaps the first only -> 64, 16 overlaps
        // all three -> 128.
        assert_eq!(plan.offsets, [0, 64, 64, 128]);
    }
}
