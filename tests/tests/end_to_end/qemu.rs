//! The firmware in QEMU against the engine on the host: the same blob and images give
//! the same classes on every emulated board, instruction counts are deterministic, and
//! a broken model or a firmware failure is reported, not hidden.

use std::time::Duration;

use tinyres_compile::arch::Architecture;
use tinyres_compile::fit::Chip;
use tinyres_compile::writer::{AlignedBlob, BlobOptions, Encoding, LayerSpec, Memory, Network};
use tinyres_core::{Interpreter, Model};
use tinyres_data::Dataset;
use tinyres_device::qemu::{self, Board, Transport};

/// Images of distinct colours and gradients with a little noise, so an untrained net
/// still tells them apart.
pub(super) fn images(n: usize, seed: u32) -> Dataset {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 24) as u8
    };
    let labels = (0..n).map(|_| next() % 10).collect();
    let mut pixels = Vec::with_capacity(n * 3072);
    for i in 0..n {
        let base = [next(), next(), next()];
        for y in 0..32u8 {
            for x in 0..32u8 {
                for (c, &b) in base.iter().enumerate() {
                    let gradient = if (i + c) % 2 == 0 { 4 * y } else { 4 * x };
                    pixels.push(b.wrapping_add(gradient).wrapping_add(next() % 16));
                }
            }
        }
    }
    Dataset {
        height: 32,
        width: 32,
        channels: 3,
        pixels,
        labels,
        class_names: Vec::new(),
    }
}

/// Seed of the prototype images: prototype `k` is image `k` of `images(10, PROTOTYPES)`.
const PROTOTYPES: u32 = 99;

/// ResNet-8 with He-initialised convolutions and a classifier imprinted from the
/// pooled features of ten prototype images (logit k: the centred features projected
/// on prototype k's centred features),
/// so that the untrained net still sorts different images into different classes.
pub(super) fn resnet8() -> Network {
    imprinted(
        Architecture::by_name("resnet8")
            .unwrap()
            .network(11)
            .unwrap(),
    )
}

/// `net` with its classifier imprinted from ten prototype images (see [`resnet8`]).
pub(super) fn imprinted(mut net: Network) -> Network {
    let blob = AlignedBlob::new(&net.to_blob(Encoding::F32).unwrap());
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let mut interp = Interpreter::new(model, &mut arena).unwrap();
    let prototypes = images(10, PROTOTYPES);
    let features: Vec<Vec<f32>> = (0..10)
        .map(|k| {
            interp.run(prototypes.image(k)).unwrap();
            let mut f = vec![0.0; model.num_features()];
            interp.features(&mut f).unwrap();
            f
        })
        .collect();
    let n = features[0].len();
    let mean: Vec<f32> = (0..n)
        .map(|j| features.iter().map(|f| f[j]).sum::<f32>() / 10.0)
        .collect();
    if let Some(LayerSpec::Dense(d)) = net.layers.last_mut() {
        d.weights = features
            .iter()
            .flat_map(|f| {
                let centred: Vec<f32> = f.iter().zip(&mean).map(|(a, m)| a - m).collect();
                let norm = centred.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
                centred.into_iter().map(move |v| 4.0 * v / norm)
            })
            .collect();
        // Bias −w·mean, so that logit k is w_k · (features − mean).
        d.bias = d
            .weights
            .chunks(n)
            .map(|w| -w.iter().zip(&mean).map(|(a, b)| a * b).sum::<f32>())
            .collect();
    }
    net
}

pub(super) fn int8_blob(net: &Network) -> AlignedBlob {
    let calibration = images(10, PROTOTYPES);
    let ranges = net
        .calibrate((0..10).map(|i| calibration.image(i)))
        .unwrap();
    AlignedBlob::new(&net.to_blob(Encoding::Int8(&ranges)).unwrap())
}

fn host_classes(blob: &AlignedBlob, data: &Dataset) -> Vec<usize> {
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let mut interp = Interpreter::new(model, &mut arena).unwrap();
    (0..data.len())
        .map(|i| interp.run(data.image(i)).unwrap())
        .collect()
}

/// `classes`, checked to hold three classes or more: a test whose images all fall in
/// one class would not tell a broken device from a working one.
pub(super) fn several_classes(classes: Vec<usize>) -> Vec<usize> {
    let distinct: std::collections::BTreeSet<_> = classes.iter().collect();
    assert!(
        distinct.len() >= 3,
        "the test images should fall in several classes: {classes:?}"
    );
    classes
}

fn device(board: &Board, blob: &AlignedBlob, data: &Dataset) -> Vec<qemu::DevicePrediction> {
    device_over(board, blob, data, Transport::Semihosting)
}

/// The `classify` firmware for `board`, with the default arena, logging over
/// `transport`, ready to boot `blob`.
fn classify_device<'b>(
    board: &Board,
    blob: &'b AlignedBlob,
    transport: Transport,
) -> qemu::Device<'b> {
    qemu::Device::build_for(
        *board,
        "classify",
        blob.as_bytes(),
        qemu::DEFAULT_ARENA_BYTES,
        Duration::from_secs(300),
        transport,
    )
    .expect("firmware builds")
}

fn device_over(
    board: &Board,
    blob: &AlignedBlob,
    data: &Dataset,
    transport: Transport,
) -> Vec<qemu::DevicePrediction> {
    let device = classify_device(board, blob, transport);
    let boot = device.classify(data, 0..data.len()).expect("runs in QEMU");
    // The arena (static on Cortex-M, on the boot stack on Cortex-A) plus a few KiB of
    // stack: measured on the device.
    let total = boot.ram.static_bytes + boot.ram.stack_bytes;
    let arena = qemu::DEFAULT_ARENA_BYTES;
    // The stack `--board` fit checks count on (tinyres_compile::fit: measured, rounded
    // up to 256 B) is what the engine takes, within 1 KiB; the A53 firmware keeps the
    // arena on its stack, and its kernel pads a first layer's short filters on it
    // (2 KiB: a model without such a layer takes less).
    let aarch64 = board.target.starts_with("aarch64");
    let engine_stack = if aarch64 {
        boot.ram.stack_bytes - arena
    } else {
        boot.ram.stack_bytes
    } as u64;
    let figure = Chip::by_name(board.name).unwrap().core.stack;
    let below = if aarch64 { 3 * 1024 } else { 1024 };
    assert!(
        (figure.saturating_sub(below)..=figure).contains(&engine_stack),
        "{}: the engine took {engine_stack} B of stack; the fit check counts {figure} B",
        board.name
    );
    assert!(
        (arena + 256..arena + 64 * 1024).contains(&total),
        "{}: {:?}",
        board.name,
        boot.ram
    );
    boot.predictions
}

#[test]
fn int8_resnet8_on_every_cortex_m_board_matches_the_host_engine() {
    let blob = int8_blob(&resnet8());
    let mut data = images(10, PROTOTYPES);
    data.truncate(6);
    let host = several_classes(host_classes(&blob, &data));
    for board in qemu::BOARDS {
        let predictions = device(&board, &blob, &data);
        let classes: Vec<usize> = predictions.iter().map(|p| p.class).collect();
        assert_eq!(classes, host, "{}", board.name);
        for (i, p) in predictions.iter().enumerate() {
            assert_eq!((p.index, p.label), (i, data.labels[i]));
            // ResNet-8 is 12.5 M MACs; no kernel does more than 8 per instruction.
            assert!(
                (1_500_000..1_000_000_000).contains(&p.instructions),
                "{}: {}",
                board.name,
                p.instructions
            );
        }
        println!(
            "{}: {} instructions per inference",
            board.name, predictions[0].instructions
        );
    }
}

/// ResNet-8 with Winograd filters in its blob: the DSP Cortex-M kernels compute its
/// 3×3 stride-1 layers from them, with the host's classes, in fewer instructions
/// than from the weights alone (which shows that the filters' path ran).
#[test]
fn int8_resnet8_with_winograd_filters_matches_the_host_engine() {
    let net = resnet8();
    let calibration = images(10, PROTOTYPES);
    let ranges = net
        .calibrate((0..10).map(|i| calibration.image(i)))
        .unwrap();
    let blob = |winograd| {
        let bytes = net
            .to_blob_with_options(
                Encoding::Int8(&ranges),
                BlobOptions {
                    memory: Memory::Min,
                    winograd,
                },
            )
            .unwrap();
        AlignedBlob::new(&bytes)
    };
    let (plain, filters) = (blob(false), blob(true));
    let mut data = images(10, PROTOTYPES);
    data.truncate(4);
    let host = host_classes(&filters, &data);
    assert_eq!(host, host_classes(&plain, &data));
    for board in ["mps2-an386", "mps2-an505"] {
        let board = Board::by_name(board).unwrap();
        let with = device(&board, &filters, &data);
        let classes: Vec<usize> = with.iter().map(|p| p.class).collect();
        assert_eq!(classes, host, "{}", board.name);
        let without = device(&board, &plain, &data);
        assert!(
            with[0].instructions < without[0].instructions * 9 / 10,
            "{}: {} instructions with the filters, {} without",
            board.name,
            with[0].instructions,
            without[0].instructions
        );
    }
}

/// The ImageNet ResNets' layout (7×7/2 stem, 3×3/2 max pool, option-B projections) as
/// PyTorch exports torchvision's definition (tests/models/make_models.py), in int8: on
/// a DSP Cortex-M and on the Cortex-A53, the same classes as the host's engine.
#[test]
fn int8_imagenet_layout_with_max_pool_matches_the_host_engine() {
    let onnx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/torch_imagenet_basic_torchscript.onnx");
    let imported = tinyres_compile::import_onnx(&onnx, &Default::default()).unwrap();
    let blob = int8_blob(&imprinted(imported.network));
    let model = Model::parse(blob.as_bytes()).unwrap();
    let pools = (0..model.num_layers())
        .filter(|&i| matches!(model.layer(i), Ok(tinyres_core::Layer::MaxPool(_))))
        .count();
    assert_eq!(pools, 1);
    let mut data = images(10, PROTOTYPES);
    data.truncate(6);
    let host = several_classes(host_classes(&blob, &data));
    for board in ["mps2-an386", "virt-a53"] {
        let board = Board::by_name(board).unwrap();
        let classes: Vec<usize> = device(&board, &blob, &data)
            .iter()
            .map(|p| p.class)
            .collect();
        assert_eq!(classes, host, "{}", board.name);
    }
}

/// The instruments and the kernels, checked on each board: the counter reads a loop
/// of known length right (the SysTick conversion uses the board's own core clock:
/// QEMU clocks mps2-an505 at 20 MHz and mps3-an547 at 32 MHz, the others at 25 MHz;
/// a wrong clock shows here, where changing the `-icount` shift could not show it),
/// and every arch kernel equals the portable one bit for bit on the board's own
/// instruction set.
#[test]
fn selftest_counter_and_kernels_on_every_board() {
    let expected_kernel = |board: &str| match board {
        "mps2-an386" | "mps2-an500" | "mps2-an505" => "cortex-m-dsp",
        "mps3-an547" => "helium",
        "virt-a53" => "neon",
        _ => "armv6m",
    };
    for board in qemu::BOARDS {
        let result = qemu::selftest(&board, Duration::from_secs(300)).expect("selftest passes");
        println!("{}: {result:?}", board.name);
        assert_eq!(result.calibration_expected, 3_000_000);
        // The loop plus the counter reads around it: a few tens of instructions.
        assert!(
            (3_000_000..3_000_100).contains(&result.calibration_instructions),
            "{}: the counter read {} instructions for a loop of 3,000,000",
            board.name,
            result.calibration_instructions
        );
        assert_eq!(result.kernel, expected_kernel(board.name), "{}", board.name);
        assert!(result.cases >= 300, "{}: {result:?}", board.name);
        check_timings(&board, &result.timings);
    }
}

/// The cycle model against the Technical Reference Manuals' timings, on the sequences
/// of the selftest firmware (firmware/src/bin/selftest.rs): per iteration, the body
/// and `subs` (1) and a taken `bne` (1 + P: P = 2 on the M3 and M4 from a word-aligned
/// target, 1 on the M0+). The runs of N and 2N iterations differ by exactly N
/// iterations: the counter reads and the last, untaken branch cancel. The instruction
/// counts are checked too (body + 2; the cycle model counts exactly, the counter to
/// the nearest instruction).
fn check_timings(board: &Board, timings: &[qemu::Timing]) {
    if board.target.starts_with("aarch64") {
        assert!(timings.is_empty());
        return;
    }
    let m3 = board.cycle_model == Some("m3");
    // (name, instructions of the body, its cycles), and the loop's `subs; bne`.
    let (expected, loop_cycles): (Vec<(&str, u64, u64)>, u64) =
        if board.target.starts_with("thumbv6m") {
            // The M0+ (TRM r0p1, 3.3): loads and stores 2, LDM 1 + N (after a MOV),
            // MULS 1 with the single-cycle multiplier.
            let sequences = vec![
                ("loads", 4, 8),
                ("stores", 2, 4),
                ("ldm", 2, 5),
                ("muls", 4, 4),
            ];
            (sequences, 1 + 2)
        } else {
            let mut sequences = vec![
                // LDR 2, then three pipelined LDRs 1 each.
                ("loads", 4, 5),
                // The second LDR's address is the first's result: no pipelining, 2 + 2.
                ("load_use_address", 2, 4),
                // ADD 1, then LDR 2 + 1 (an address from the instruction before).
                ("computed_address", 2, 4),
                // LDR 2, STR with a register offset pipelined after it 1.
                ("store_after_load", 2, 3),
                // LDM 1 + N.
                ("ldm", 1, 5),
                // CMP 1, IT folded 0, ADD 1.
                ("folded_it", 3, 2),
                // MLA: 1 on the M4, 2 on the M3.
                ("mla", 4, if m3 { 8 } else { 4 }),
            ];
            if !m3 {
                // SMLAD 1 (the cores with the DSP extension).
                sequences.push(("smlad", 4, 4));
            }
            (sequences, 1 + 3)
        };
    let names: Vec<&str> = timings.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        timings.len(),
        2 * expected.len(),
        "{}: {names:?}",
        board.name
    );
    for (name, body_instructions, body_cycles) in expected {
        let runs: Vec<&qemu::Timing> = timings.iter().filter(|t| t.name == name).collect();
        let [once, twice] = runs[..] else {
            panic!("{}: {name} ran {} times: {names:?}", board.name, runs.len());
        };
        let n = once.iterations;
        assert_eq!(twice.iterations, 2 * n);
        // Each count is converted from the board's ticks and rounded: within 1 each.
        assert!(
            (twice.instructions - once.instructions).abs_diff(n * (body_instructions + 2)) <= 2,
            "{}: {name}: {} instructions for {n} iterations of {}",
            board.name,
            twice.instructions - once.instructions,
            body_instructions + 2
        );
        match (board.cycle_model, once.cycles, twice.cycles) {
            (None, None, None) => {}
            (Some(_), Some(c1), Some(c2)) => assert_eq!(
                c2 - c1,
                n * (body_cycles + loop_cycles),
                "{}: {name}: estimated cycles per iteration {} (the TRM: {})",
                board.name,
                (c2 - c1) as f64 / n as f64,
                body_cycles + loop_cycles
            ),
            other => panic!("{}: {name}: cycles {other:?}", board.name),
        }
    }
}

/// The per-layer profile covers the input and every layer, and adds up to the
/// inference's own count (each step adds one counter read).
#[test]
fn the_profile_covers_every_layer_and_adds_up() {
    let blob = int8_blob(&resnet8());
    let data = images(2, 3);
    let board = Board::by_name("mps2-an386").unwrap();
    let device = classify_device(&board, &blob, Transport::Semihosting);
    let boot = device.classify(&data, 0..data.len()).unwrap();
    let model = Model::parse(blob.as_bytes()).unwrap();
    let rows = tinyres_compile::report::profile(
        &tinyres_compile::report::describe(&model).unwrap(),
        &boot.profile,
        boot.profile_cycles.as_deref(),
    )
    .unwrap();
    // The input, then every layer once (a streamed group's layers in one row).
    let covered: usize = rows
        .iter()
        .filter_map(|r| {
            r.layer
                .map(|first| r.group_end.unwrap_or(first) + 1 - first)
        })
        .sum();
    assert_eq!(covered, usize::from(model.num_layers()));
    assert_eq!(rows[0].layer, None);
    let sum: u64 = rows.iter().map(|r| r.instructions).sum();
    let whole = boot.predictions[0].instructions;
    // Each layer's counter read costs a few instructions, and `run` and the profiled
    // `run_observed` are compiled separately (one per closure): the streamed groups'
    // code differs by a few thousand instructions between the two (measured 2,121 of
    // 26.4 M on the M4).
    let tolerance = 64 * (u64::from(model.num_layers()) + 1) + whole / 5_000;
    assert!(
        sum.abs_diff(whole) < tolerance,
        "profile sum {sum} vs inference {whole}"
    );
    assert!(rows.iter().skip(1).all(|r| r.instructions > 0));
    // The cycle model's estimates cover the same steps and the inference: at least one
    // cycle per instruction but for folded ITs, and less than three on average.
    let cycles = boot.predictions[0]
        .cycles
        .expect("the M4 has a cycle model");
    assert!(
        (whole..3 * whole).contains(&cycles),
        "{cycles} cycles for {whole} instructions"
    );
    let step_cycles: u64 = rows.iter().map(|r| r.cycles.unwrap()).sum();
    assert!(
        step_cycles.abs_diff(cycles) < 3 * tolerance,
        "profile {step_cycles} cycles vs inference {cycles}"
    );
}

/// On a board without a cycle model, `count_functions` still says where a boot's
/// instructions went: the plugin in its counting mode sees the whole boot, so its
/// functions hold at least the instructions SysTick counted for the inferences (the
/// images and the profiled run), and not many times more (the boot around them).
#[test]
fn a_board_without_a_cycle_model_counts_instructions_by_function() {
    let blob = int8_blob(&resnet8());
    let data = images(2, 3);
    let board = Board::by_name("mps3-an547").unwrap();
    assert_eq!(board.cycle_model, None);
    let device = classify_device(&board, &blob, Transport::Semihosting).count_functions();
    let boot = device.classify(&data, 0..data.len()).unwrap();
    let functions = boot.functions.expect("functions were asked for");
    assert!(
        functions.iter().all(|f| f.cycles.is_none()),
        "{functions:?}"
    );
    assert!(
        functions
            .windows(2)
            .all(|w| w[0].instructions >= w[1].instructions),
        "not the costliest first: {functions:?}"
    );
    assert!(
        functions[0].name.starts_with("tinyres_core::"),
        "the engine is not the costliest: {functions:?}"
    );
    let counted: u64 = functions.iter().map(|f| f.instructions).sum();
    let inferences: u64 = boot.predictions.iter().map(|p| p.instructions).sum::<u64>()
        + boot.profile.iter().sum::<u64>();
    assert!(
        (inferences..3 * inferences).contains(&counted),
        "{counted} instructions by function, {inferences} counted by SysTick"
    );
}

/// A stack overflow stops the firmware with a fault, reported as such: the stack sits
/// at the bottom of RAM, below the static data, so an overflow runs off into unmapped
/// memory instead of overwriting the statics (and the arena among them), and the
/// HardFault handler, on a stack of its own, logs it. (The ARMv6-M build runs on the
/// M3, whose fault takes the ARMv7-M path; on a real M0+ the unstackable fault locks
/// the core up, which `tinyres run` reports too.) On the A53 a store into the guard
/// page below the stack raises a watchpoint exception, which its vectors log.
#[test]
fn a_stack_overflow_faults_instead_of_overwriting_data() {
    let cortex_m = "HardFault: stack overflow (the stack pointer";
    for (name, expected) in [
        ("mps2-an386", cortex_m),
        ("mps2-an385-v6m", cortex_m),
        // The A53's stack sits above .bss: a watched guard page between them.
        ("virt-a53", "exception: stack overflow (a store at"),
    ] {
        let board = Board::by_name(name).unwrap();
        let blob = int8_blob(&resnet8());
        let device = qemu::Device::build(
            board,
            "stack_overflow",
            blob.as_bytes(),
            qemu::DEFAULT_ARENA_BYTES,
            Duration::from_secs(120),
        )
        .unwrap();
        let error = format!("{:#}", device.classify(&images(1, 1), 0..1).unwrap_err());
        assert!(
            error.contains(expected) && !error.contains("did not overflow"),
            "{name}: {error}"
        );
    }
}

/// An f32 model on a core without an FPU (soft float: 25 s of QEMU per image): one
/// image, its logits compared byte for byte with the host engine's (the f32 engine
/// accumulates in a fixed order, bit-identical on every target).
#[test]
fn f32_model_on_the_soft_float_cortex_m3_matches_the_host_engine() {
    let blob = AlignedBlob::new(&resnet8().to_blob(Encoding::F32).unwrap());
    let data = images(1, 2);
    let board = Board::by_name("mps2-an385").unwrap();
    let device = device(&board, &blob, &data);
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let mut host = Interpreter::new(model, &mut arena).unwrap();
    let class = host.run(data.image(0)).unwrap();
    let logits = tinyres_core::crc32(host.output_bytes().unwrap());
    assert_eq!(
        (device[0].class, device[0].output_crc),
        (class, Some(logits))
    );
}

#[test]
fn instruction_counts_are_deterministic() {
    let blob = int8_blob(&resnet8());
    let data = images(2, 3);
    let board = Board::by_name("mps2-an386").unwrap();
    assert_eq!(device(&board, &blob, &data), device(&board, &blob, &data));
}

/// Over either transport: under RTT the error arrives before the exit too (the
/// firmware flushes RTT, waiting for the reader, before it leaves).
#[test]
fn a_model_the_device_rejects_is_reported_with_its_log() {
    let blob = int8_blob(&resnet8());
    let mut bytes = blob.as_bytes().to_vec();
    bytes[200] ^= 0xFF; // the host would refuse this blob; the device must too
    let board = Board::by_name("mps2-an386").unwrap();
    let data = images(1, 4);
    for transport in [Transport::Semihosting, Transport::Rtt] {
        let device = qemu::Device::build_for(
            board,
            "classify",
            &bytes,
            qemu::DEFAULT_ARENA_BYTES,
            Duration::from_secs(120),
            transport,
        )
        .unwrap();
        let err = device.classify(&data, 0..1).unwrap_err().to_string();
        assert!(
            err.contains("failed") && err.contains("ChecksumMismatch"),
            "{transport:?}: {err}"
        );
    }
}

/// RTT, the hardware transport, read through QEMU's gdbstub as a probe reads it: the
/// same frames as semihosting, so the same classes and instruction counts (polling
/// halts the guest, and its virtual clock with it).
#[test]
fn the_rtt_transport_carries_the_same_results_as_semihosting() {
    let blob = int8_blob(&resnet8());
    let data = images(3, 5);
    let board = Board::by_name("mps2-an386").unwrap();
    let over_rtt = device_over(&board, &blob, &data, Transport::Rtt);
    let over_semihosting = device(&board, &blob, &data);
    assert_eq!(over_rtt.len(), over_semihosting.len());
    for (rtt, semihosting) in over_rtt.iter().zip(&over_semihosting) {
        assert_eq!(
            (rtt.index, rtt.label, rtt.class),
            (semihosting.index, semihosting.label, semihosting.class)
        );
        // The two firmware builds start counting at different phases of the SysTick,
        // whose tick (40 ns at 25 MHz) is 0.625 of an instruction's 64 ns under
        // `-icount shift=6`: a count can round one instruction apart. And the counter's
        // wrap interrupt (every 2^24 ticks, about 10 M instructions) can fall inside
        // one build's inference and not the other's: its handler's few instructions.
        assert!(
            rtt.instructions.abs_diff(semihosting.instructions) <= 16,
            "{rtt:?} vs {semihosting:?}"
        );
    }
    assert_eq!(
        over_rtt.iter().map(|p| p.class).collect::<Vec<_>>(),
        host_classes(&blob, &data)
    );
}

#[test]
fn rtt_is_refused_on_cortex_a_with_a_reason() {
    let board = Board::by_name("virt-a53").unwrap();
    let err = qemu::Device::build_for(
        board,
        "classify",
        &[],
        qemu::DEFAULT_ARENA_BYTES,
        Duration::from_secs(1),
        Transport::Rtt,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("RTT") && err.contains("virt-a53"), "{err}");
}
