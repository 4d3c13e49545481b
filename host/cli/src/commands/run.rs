//! `tinyres run`: the firmware in QEMU on one board, classifying images or learning a
//! new class, every prediction checked against the host engine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tinyres_compile::report::{self, describe, StepProfile};
use tinyres_compile::writer::AlignedBlob;
use tinyres_core::{Interpreter, Model};
use tinyres_data::{write_atomically, Dataset, Split};
use tinyres_device::qemu::{self, Board};

use super::compile::{holds_tflite, tflite_blob};
use super::{load_blob, print_json};

/// The firmware that learns on the device in `tinyres run --finetune`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LearnWith {
    /// `App::finetune` over the shots and rehearsal images.
    Finetune,
    /// `App::step` with the button held on each shot.
    Button,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Emulated board: mps2-an386 (Cortex-M4F), mps2-an500 (M7), mps2-an505 (M33),
    /// mps3-an547 (M55), mps2-an385 (M3, soft float), mps2-an385-v6m (a Cortex-M0+
    /// build, ARMv6-M, on the M3), virt-a53 (Cortex-A53).
    #[arg(long, default_value = "mps2-an386")]
    board: String,
    /// The model: a blob (.trm), or an int8 TensorFlow Lite file (compiled with its own
    /// quantization, as `tinyres compile` does).
    #[arg(long)]
    model: PathBuf,
    /// Images: `synthetic`, an image folder (`DIR/test/<class>/*.png|jpg`), or a CIFAR-10
    /// batch (.bin/.bin.gz) or directory (test_batch).
    #[arg(long)]
    data: PathBuf,
    /// Classify at most this many images.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Seconds one QEMU boot may take before it counts as hung.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Learn a new class on the device from this data (its training split): shots of
    /// the class labeled with the next free class index, plus images of known classes
    /// for rehearsal. Reports accuracy before and after, and checks that a second boot
    /// restores what was learned from the flash image.
    #[arg(long, value_name = "DATA")]
    finetune: Option<PathBuf>,
    /// Name of the new class (for the report).
    #[arg(long, requires = "finetune")]
    new_class: Option<String>,
    /// Shots of the new class to learn from.
    #[arg(long, default_value_t = 20, requires = "finetune")]
    shots: usize,
    /// Rehearsal images of known classes learned from beside the shots (default: 10
    /// per shot). The device weighs both so that every class has an equal share of
    /// the loss.
    #[arg(long, requires = "finetune")]
    rehearsal: Option<usize>,
    /// How the device learns: `finetune` (the `finetune` firmware: imprint from the
    /// shots against the rehearsal images, then class-balanced SGD over both) or
    /// `button` (the `teach` firmware, the interactive loop of a board: the button
    /// held on each shot, the class imprinted from the first five against the frames
    /// shown without the button, and re-imprinted with every later shot).
    #[arg(long, value_enum, default_value_t = LearnWith::Finetune, requires = "finetune")]
    learn_with: LearnWith,
    /// Directory holding the device's flash image (`tinyres-flash.bin`, created erased
    /// if missing); default: a fresh temporary directory.
    #[arg(long, requires = "finetune")]
    flash_dir: Option<PathBuf>,
    /// How the firmware's defmt log reaches the host: semihosting (QEMU's console) or
    /// RTT, the transport of a real board, read through QEMU's gdbstub as a debug probe
    /// reads it (Cortex-M boards).
    #[arg(long, value_enum, default_value_t = qemu::Transport::Semihosting)]
    transport: qemu::Transport,
    /// Also report instructions per layer, with MACs and MACs per instruction (the
    /// device profiles the first image once more, reading its counter after every
    /// layer), and where the first boot's estimated cycles (or, on a board without a
    /// cycle model, its instructions) went, by function of the firmware.
    #[arg(long, conflicts_with = "finetune")]
    profile: bool,
    /// With --profile: also draw the per-layer profile as a bar chart into this PNG.
    #[arg(long, value_name = "FILE.png", requires = "profile")]
    profile_plot: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The learning scenario of `tinyres run --finetune`: three boots (before, learning,
/// reboot from the same flash image).
fn finetune_on_device(
    args: &Args,
    board: Board,
    blob: &AlignedBlob,
    test: &Dataset,
    learn_from: &Path,
    arena: usize,
) -> Result<()> {
    let pool = Dataset::load_fitted(learn_from, Split::Train, (test.height, test.width))?;
    let timeout = Duration::from_secs(args.timeout);
    let firmware = match args.learn_with {
        LearnWith::Finetune => "finetune",
        LearnWith::Button => "teach",
    };
    let device = qemu::Device::build_for(
        board,
        firmware,
        blob.as_bytes(),
        arena,
        timeout,
        args.transport,
    )?;
    let scratch = std::env::temp_dir().join(format!("tinyres-finetune-{}", std::process::id()));
    let flash_dir = args.flash_dir.clone().unwrap_or_else(|| scratch.clone());
    let rehearsal = args
        .rehearsal
        .unwrap_or(args.shots * qemu::REHEARSAL_PER_SHOT);
    let report = qemu::learning_scenario(
        &device,
        test,
        &pool,
        args.shots,
        rehearsal,
        &flash_dir,
        |step| eprintln!("{step}"),
    );
    if args.flash_dir.is_none() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let report = report.with_context(|| format!("learning from {}", learn_from.display()))?;
    let name = args
        .new_class
        .clone()
        .unwrap_or_else(|| format!("class {}", report.new_class));
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["board"] = serde_json::to_value(device.board)?;
        value["new_class"] = serde_json::json!({ "index": report.new_class, "name": name });
        print_json(&value)?;
    } else {
        println!(
            "new class     {name} (index {}), {} shots + {} rehearsal images, on {}",
            report.new_class, report.shots, report.rehearsal, device.board.name
        );
        println!("new class     {}", report.new_class_accuracy);
        println!("old classes   {}", report.old_classes_accuracy);
        println!(
            "persistence   {}",
            if report.persisted {
                "the reboot restored the learned head (same predictions)"
            } else {
                "FAILED"
            }
        );
    }
    if !report.persisted {
        bail!("the second boot did not restore what the first learned");
    }
    Ok(())
}

pub fn command(args: &Args) -> Result<()> {
    let board = Board::by_name(&args.board)?;
    let blob = if holds_tflite(&args.model)? {
        AlignedBlob::new(&tflite_blob(
            &args.model,
            tinyres_compile::BlobOptions::default(),
        )?)
    } else {
        load_blob(&args.model)?
    };
    let model = Model::parse(blob.as_bytes())?;
    let (height, width, _) = model.input_shape();
    let mut data = Dataset::load_fitted(&args.data, Split::Test, (height, width))?;
    data.truncate(args.limit);
    if data.is_empty() {
        bail!("{}: no images", args.data.display());
    }
    let (h, w, c) = model.input_shape();
    if (h, w, c) != (data.height, data.width, data.channels) {
        bail!(
            "{} expects {h}x{w}x{c} images, {} holds {}x{}x{}",
            args.model.display(),
            args.data.display(),
            data.height,
            data.width,
            data.channels
        );
    }
    // Exactly the plan's peak, so the RAM the device reports is what the model needs.
    let arena = model.arena_size();
    if let Some(learn_from) = &args.finetune {
        return finetune_on_device(args, board, &blob, &data, learn_from, arena);
    }
    let timeout = Duration::from_secs(args.timeout);
    let mut device = qemu::Device::build_for(
        board,
        "classify",
        blob.as_bytes(),
        arena,
        timeout,
        args.transport,
    )?;
    if args.profile {
        device = device.count_functions();
    }

    let classified = qemu::classify_all(&device, &data, |range| {
        eprintln!(
            "booting {} in QEMU: images {}..{} of {}",
            board.name,
            range.start,
            range.end,
            data.len()
        )
    })?;
    let profile = if args.profile {
        Some(report::profile(
            &describe(&model)?,
            &classified.profile,
            classified.profile_cycles.as_deref(),
        )?)
    } else {
        None
    };
    if let (Some(rows), Some(path)) = (&profile, &args.profile_plot) {
        let title = format!(
            "{} on {} ({}): instructions per step of one inference",
            args.model.file_name().unwrap_or_default().to_string_lossy(),
            board.name,
            board.core
        );
        write_atomically(path, &profile_chart(rows, &title)?)?;
    }
    let classified_functions = classified.functions.filter(|_| args.profile);
    let (predictions, ram) = (classified.predictions, classified.ram);
    // The engine on the host: the device must agree with it on every image.
    let mut host_arena = vec![0u8; model.required_arena()];
    let mut host = Interpreter::new(model, &mut host_arena)?;
    let mut mismatches = Vec::new();
    for p in &predictions {
        let host_class = host.run(data.image(p.index))?;
        if host_class != p.class {
            mismatches.push((p.index, p.class, host_class));
        }
    }
    let correct = predictions
        .iter()
        .filter(|p| usize::from(p.label) == p.class)
        .count();
    let accuracy = correct as f64 / predictions.len() as f64;
    let total: u64 = predictions.iter().map(|p| p.instructions).sum();
    let mean = total / predictions.len() as u64;
    let (min, max) = predictions.iter().fold((u64::MAX, 0), |(lo, hi), p| {
        (lo.min(p.instructions), hi.max(p.instructions))
    });
    // Estimated cycles, where the board has a cycle model.
    let cycles: Option<Vec<u64>> = predictions.iter().map(|p| p.cycles).collect();
    let mean_cycles = cycles
        .as_ref()
        .map(|c| c.iter().sum::<u64>() / c.len() as u64);
    if args.json {
        let value = serde_json::json!({
            "board": board,
            "model": args.model,
            "images": predictions,
            "count": predictions.len(),
            "accuracy": accuracy,
            "instructions_per_inference": mean,
            "instructions_min": min,
            "instructions_max": max,
            "total_instructions": total,
            "cycles_per_inference_estimated": mean_cycles,
            "cycle_model": board.cycle_model.map(|core| serde_json::json!({
                "core": core,
                "assumptions": tinyres_device::cycles::ASSUMPTIONS,
            })),
            "matches_host": mismatches.is_empty(),
            "ram": ram,
            "profile": profile,
            "functions": classified_functions,
        });
        print_json(&value)?;
    } else {
        println!(
            "{:>6} {:>6} {:>6} {:>14} {:>14}",
            "index", "label", "class", "instructions", "cycles (est.)"
        );
        for p in &predictions {
            println!(
                "{:>6} {:>6} {:>6} {:>14} {:>14}",
                p.index,
                p.label,
                p.class,
                report::thousands(p.instructions),
                p.cycles.map_or("-".to_string(), report::thousands)
            );
        }
        println!();
        println!(
            "board         {} ({}, QEMU -icount shift={})",
            board.name,
            board.core,
            board.icount_shift()
        );
        println!(
            "accuracy      {:.2} % ({correct}/{})",
            100.0 * accuracy,
            predictions.len()
        );
        println!(
            "instructions  {} per inference (min {}, max {})",
            report::thousands(mean),
            report::thousands(min),
            report::thousands(max)
        );
        match mean_cycles {
            Some(c) => println!(
                "cycles        {} per inference, estimated for the {}: {}",
                report::thousands(c),
                board.core,
                tinyres_device::cycles::ASSUMPTIONS
            ),
            None => println!(
                "cycles        not estimated: no cycle model of the {}",
                board.core
            ),
        }
        println!(
            "RAM           {} static (arena {}) + {} stack",
            report::bytes(ram.static_bytes as u64),
            report::bytes(arena as u64),
            report::bytes(ram.stack_bytes as u64)
        );
        println!(
            "host engine   {}",
            if mismatches.is_empty() {
                "identical predictions".to_string()
            } else {
                format!("{} mismatches", mismatches.len())
            }
        );
        if let Some(rows) = &profile {
            println!(
                "\nprofile of image {} on {}:\n",
                predictions[0].index, board.name
            );
            print!("{}", report::profile_table(rows));
            if let Some(functions) = &classified_functions {
                let images = predictions
                    .len()
                    .min(qemu::images_per_boot(&board, data.image_len()));
                println!(
                    "\nwhere the first boot's {} went ({images} image{} and the profiled run), by function:\n",
                    if mean_cycles.is_some() {
                        "estimated cycles"
                    } else {
                        "instructions"
                    },
                    if images == 1 { "" } else { "s" }
                );
                print!("{}", super::cycles::function_table(functions, 12));
            }
        }
    }
    if let Some(&(index, device, host)) = mismatches.first() {
        bail!("{} predictions differ from the host engine; first: image {index}, device {device}, host {host}", mismatches.len());
    }
    Ok(())
}

/// The profile as a bar chart, one bar per step.
fn profile_chart(rows: &[StepProfile], title: &str) -> Result<Vec<u8>> {
    let bars: Vec<tinyres_plot::ProfileBar> = rows
        .iter()
        .map(|row| tinyres_plot::ProfileBar {
            label: match row.layer {
                Some(k) => format!("{k} {}", row.op),
                None => row.op.clone(),
            },
            instructions: row.instructions,
            macs_per_instruction: row.macs_per_instruction,
        })
        .collect();
    tinyres_plot::profile_chart(&bars, title)
}
