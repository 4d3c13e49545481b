//! Estimated cycles: a cycle model of the core applied to the exact instruction stream
//! QEMU executes (`qemu-plugin/cycles.c`, a QEMU TCG plugin; its header comment holds
//! the model's rules and assumptions). The plugin is compiled here with the system's C
//! compiler the first time it is needed, and records the model's running totals at
//! every read of SysTick's counter; [`intervals`] pairs those reads with the
//! firmware's own instruction counts between its counter reads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};

/// The plugin's source.
const SOURCE: &str = include_str!("../qemu-plugin/cycles.c");

/// What the estimates assume, for reports.
pub const ASSUMPTIONS: &str = "the core's pipeline as its Technical Reference Manual times it, with zero-wait-state code and data memory and exception entry not counted (qemu-plugin/cycles.c has every rule): an estimate, not a measurement";

/// SysTick's current value register: the firmware's counter reads load it.
pub const SYSTICK_CURRENT: u32 = 0xE000_E018;

/// The compiled plugin, built once per source (kept in `dir`), or why it cannot be.
pub fn plugin(dir: &Path) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build(dir).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

fn build(dir: &Path) -> Result<PathBuf> {
    let hash = tinyres_core::crc32(SOURCE.as_bytes());
    let library = dir.join(format!("tinyres-cycles-{hash:08x}.so"));
    if library.exists() {
        return Ok(library);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let source = dir.join(format!("tinyres-cycles-{hash:08x}.c"));
    std::fs::write(&source, SOURCE)
        .with_context(|| format!("cannot write {}", source.display()))?;
    // Built beside its final name and renamed: concurrent builds do not see half a file.
    let partial = dir.join(format!(
        "tinyres-cycles-{hash:08x}.so.{}.partial",
        std::process::id()
    ));
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let output = Command::new(&compiler)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&partial)
        .arg(&source)
        .output()
        .with_context(|| {
            format!("cannot run the C compiler `{compiler}` to build the cycle model (Debian/Ubuntu: sudo apt-get install gcc)")
        })?;
    ensure!(
        output.status.success(),
        "building the cycle model with {compiler} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &library)
        .with_context(|| format!("cannot write {}", library.display()))?;
    Ok(library)
}

/// What the plugin recorded in one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// Instructions of the whole run.
    pub instructions: u64,
    /// Estimated cycles of the whole run.
    pub cycles: u64,
    /// `(instructions, cycles)` so far at each read of the counter.
    pub reads: Vec<(u64, u64)>,
    /// `(address, instructions, cycles)` of every translation block that ran.
    pub blocks: Vec<(u64, u64, u64)>,
}

/// What one function of the firmware cost over a run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FunctionCost {
    /// The function (demangled, without its hash), or `?` for code outside any symbol.
    pub name: String,
    /// Instructions executed in it.
    pub instructions: u64,
    /// Their estimated cycles; `None` from a trace that counted instructions alone
    /// ([`COUNT_ONLY`]).
    pub cycles: Option<u64>,
}

/// The plugin's `core=` for a board without a cycle model: it counts instructions
/// alone, by translation block, so [`by_function`] still says where they went.
pub const COUNT_ONLY: &str = "none";

/// The trace's blocks summed by the function of `elf` they start in, the costliest
/// first: by estimated cycles if `estimated` (the trace of a cycle model), else by
/// instructions, with no cycles.
pub fn by_function(elf: &Path, trace: &Trace, estimated: bool) -> Result<Vec<FunctionCost>> {
    use object::{Object, ObjectSymbol, SymbolKind};
    let bytes = std::fs::read(elf).with_context(|| format!("cannot read {}", elf.display()))?;
    let file = object::File::parse(&*bytes)
        .with_context(|| format!("{}: not an ELF file", elf.display()))?;
    // Thumb functions' symbols have bit 0 set.
    let mut functions: Vec<(u64, u64, String)> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            let name = format!("{:#}", rustc_demangle::demangle(s.name().ok()?));
            Some((s.address() & !1, s.size(), name))
        })
        .collect();
    functions.sort();
    let mut costs: std::collections::HashMap<&str, (u64, u64)> = Default::default();
    for &(address, instructions, cycles) in &trace.blocks {
        let at = functions.partition_point(|f| f.0 <= address);
        let name = match at.checked_sub(1).map(|i| &functions[i]) {
            Some((start, size, name)) if address < start + size => name.as_str(),
            _ => "?",
        };
        let cost = costs.entry(name).or_default();
        cost.0 += instructions;
        cost.1 += cycles;
    }
    let mut costs: Vec<FunctionCost> = costs
        .into_iter()
        .map(|(name, (instructions, cycles))| FunctionCost {
            name: name.to_string(),
            instructions,
            cycles: estimated.then_some(cycles),
        })
        .collect();
    costs.sort_by(|a, b| {
        (b.cycles, b.instructions)
            .cmp(&(a.cycles, a.instructions))
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(costs)
}

/// Reads the plugin's output file.
pub fn read_trace(path: &Path) -> Result<Trace> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the cycle model wrote no {}", path.display()))?;
    let mut trace = Trace {
        instructions: 0,
        cycles: 0,
        reads: Vec::new(),
        blocks: Vec::new(),
    };
    let mut total = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let numbers = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("bad line from the cycle model: {line:?}"))
        };
        match fields.first() {
            Some(&"total") => {
                (trace.instructions, trace.cycles) = (numbers(1)?, numbers(2)?);
                total = true;
            }
            Some(&"read") => trace.reads.push((numbers(1)?, numbers(2)?)),
            Some(&"block") => {
                let address = fields
                    .get(1)
                    .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                    .with_context(|| format!("bad line from the cycle model: {line:?}"))?;
                trace.blocks.push((address, numbers(2)?, numbers(3)?));
            }
            _ => bail!("bad line from the cycle model: {line:?}"),
        }
    }
    ensure!(
        total,
        "the cycle model's output has no total (QEMU stopped early?)"
    );
    Ok(trace)
}

/// The estimated cycles of each interval the firmware measured, in order: `counts` are
/// the firmware's instruction counts between two of its counter reads, in the order
/// it took them. Each is the span between two consecutive loads of the counter (a read
/// that retries, when the counter wrapped during it, loads it twice): the first pair at
/// or after the previous interval's end whose instructions agree within `tolerance`
/// (the counter's conversion rounds).
pub fn intervals(trace: &Trace, counts: &[u64], tolerance: u64) -> Result<Vec<u64>> {
    let reads = &trace.reads;
    let mut cycles = Vec::with_capacity(counts.len());
    let mut next = 0;
    for (k, &count) in counts.iter().enumerate() {
        let found = (next..reads.len().saturating_sub(1)).find(|&i| {
            let span = reads[i + 1].0 - reads[i].0;
            span.abs_diff(count) <= tolerance
        });
        let Some(i) = found else {
            bail!(
                "the cycle model's counter reads do not line up with the firmware's count {} ({count} instructions): {} reads recorded",
                k + 1,
                reads.len()
            );
        };
        cycles.push(reads[i + 1].1 - reads[i].1);
        next = i + 1;
    }
    Ok(cycles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(reads: &[(u64, u64)]) -> Trace {
        Trace {
            instructions: 0,
            cycles: 0,
            reads: reads.to_vec(),
            blocks: Vec::new(),
        }
    }

    #[test]
    fn intervals_pair_consecutive_reads_in_order() {
        // Reads at 100, 124 (a retry), 1124, 1200, 5200.
        let t = trace(&[
            (100, 150),
            (124, 190),
            (1124, 2190),
            (1200, 2300),
            (5200, 9000),
        ]);
        assert_eq!(intervals(&t, &[1000, 4001], 1).unwrap(), vec![2000, 6700]);
        assert!(intervals(&t, &[1000, 999_999], 1).is_err());
        assert!(intervals(&t, &[4000, 1000], 1).is_err());
    }

    #[test]
    fn the_plugin_output_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("tinyres-cycles-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("trace.txt");
        std::fs::write(&path, "total 10 20\nread 1 2\nread 5 9\nblock 0x1f4 6 9\n").unwrap();
        let t = read_trace(&path).unwrap();
        assert_eq!((t.instructions, t.cycles), (10, 20));
        assert_eq!(t.reads, vec![(1, 2), (5, 9)]);
        assert_eq!(t.blocks, vec![(0x1f4, 6, 9)]);
        std::fs::write(&path, "read 1 2\n").unwrap();
        assert!(read_trace(&path).is_err());
        std::fs::write(&path, "total x 1\n").unwrap();
        assert!(read_trace(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
