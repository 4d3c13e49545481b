//! `tinyres-edge`: classifies image files or CIFAR-10 batches with a `.trm` blob on a
//! Linux board (Raspberry Pi class, AArch64 or 32-bit Armv7), with the engine alone: the
//! same `tinyres-core` the firmware runs, so its predictions are `tinyres eval`'s.
//!
//! One line per image on standard output (`input<TAB>class<TAB>name<TAB>probability`,
//! and the microseconds with `--time`), a summary on standard error; `--json` prints
//! one JSON object instead.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tinyres_core::{DType, Interpreter, Model};
use tinyres_data::{decode_image, fit_image, Dataset};

const USAGE: &str = "\
tinyres-edge: classify images with a tinyres model blob, on the engine alone

Usage: tinyres-edge [OPTIONS] MODEL.trm INPUT...

Inputs:
  FILE.png, FILE.jpg   an image; resized and centre-cropped to the model's input as
                       torchvision evaluates (an image of that size is used as it is)
  DIR                  every PNG and JPEG image under DIR, in sorted path order
  FILE.bin[.gz]        a CIFAR-10 batch: its labels give the accuracy

Options:
      --limit N   classify at most N images in all
      --time      time each inference (wall clock) and print the mean, minimum and maximum
      --json      print one JSON object instead of lines
  -h, --help      print this help
  -V, --version   print the version

Output: one line per image, `input<TAB>class<TAB>name<TAB>probability` (then the
microseconds with --time); the model and the summary go to standard error.";

/// What the command line asked for.
#[derive(Debug)]
struct Options {
    model: PathBuf,
    inputs: Vec<PathBuf>,
    limit: Option<usize>,
    time: bool,
    json: bool,
}

/// One image to classify: where it came from, its pixels at the model's size (HWC
/// `u8`), and its label where the input has one.
#[derive(Debug)]
struct Image {
    name: String,
    pixels: Vec<u8>,
    label: Option<usize>,
}

/// The outcome of one image.
#[derive(Debug)]
struct Prediction {
    class: usize,
    probability: f32,
    micros: Option<u128>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(Some(options)) => options,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tinyres-edge: {e:#}\n\nRun `tinyres-edge --help` for the usage.");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tinyres-edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The options, or `None` where `--help` or `--version` was answered.
fn parse_args(args: &[String]) -> Result<Option<Options>> {
    let mut positional = Vec::new();
    let (mut limit, mut time, mut json) = (None, false, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("tinyres-edge {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--time" => time = true,
            "--json" => json = true,
            "--limit" => {
                let value = args.next().context("--limit needs a number")?;
                limit = Some(
                    value
                        .parse()
                        .with_context(|| format!("--limit {value}: not a number"))?,
                );
            }
            flag if flag.starts_with('-') && flag.len() > 1 => bail!("unknown option {flag}"),
            path => positional.push(PathBuf::from(path)),
        }
    }
    let mut positional = positional.into_iter();
    let model = positional.next().context("no model given")?;
    let inputs: Vec<PathBuf> = positional.collect();
    if inputs.is_empty() {
        bail!("no input given: name image files, directories or CIFAR-10 batches");
    }
    Ok(Some(Options {
        model,
        inputs,
        limit,
        time,
        json,
    }))
}

fn run(options: &Options) -> Result<()> {
    let blob = std::fs::read(&options.model)
        .with_context(|| format!("cannot read {}", options.model.display()))?;
    let model = Model::parse(&blob)
        .map_err(|e| anyhow::anyhow!("{}: not a valid model: {e}", options.model.display()))?;
    let (height, width, channels) = model.input_shape();
    if channels != 3 {
        bail!(
            "{}: the model takes {channels}-channel images; this command reads RGB images only",
            options.model.display()
        );
    }
    let limit = options.limit.unwrap_or(usize::MAX);
    let mut images = Vec::new();
    for input in &options.inputs {
        if images.len() >= limit {
            break;
        }
        read_input(input, height, width, limit - images.len(), &mut images)?;
    }
    if images.is_empty() {
        bail!("no images in the inputs given");
    }
    let classes = model.num_classes();
    // Blobs compiled from files without class names have none: `-` then.
    let class_name = |class: usize| model.class_name(class).unwrap_or("-").to_string();
    let dtype = match model.dtype() {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::Int8 => "int8",
    };
    let mut arena = vec![0u8; model.required_arena()];
    let mut interpreter = Interpreter::new(model, &mut arena)
        .map_err(|e| anyhow::anyhow!("{}: {e}", options.model.display()))?;
    if !options.json {
        eprintln!(
            "{}: {dtype}, {height}x{width}x{channels} input, {classes} classes, arena {} B, {} images",
            options.model.display(),
            model.arena_size(),
            images.len()
        );
    }
    let mut probabilities = vec![0f32; classes];
    let mut predictions = Vec::with_capacity(images.len());
    for image in &images {
        let started = Instant::now();
        let class = interpreter
            .classify(&image.pixels, &mut probabilities)
            .map_err(|e| anyhow::anyhow!("{}: {e}", image.name))?;
        let micros = options.time.then(|| started.elapsed().as_micros());
        let prediction = Prediction {
            class,
            probability: probabilities[class],
            micros,
        };
        if !options.json {
            print!(
                "{}\t{class}\t{}\t{:.4}",
                image.name,
                class_name(class),
                prediction.probability
            );
            match micros {
                Some(us) => println!("\t{us}"),
                None => println!(),
            }
        }
        predictions.push(prediction);
    }
    let labelled = images.iter().filter(|i| i.label.is_some()).count();
    let correct = images
        .iter()
        .zip(&predictions)
        .filter(|(i, p)| i.label == Some(p.class))
        .count();
    let times: Vec<u128> = predictions.iter().filter_map(|p| p.micros).collect();
    let mean_micros = (!times.is_empty()).then(|| times.iter().sum::<u128>() / times.len() as u128);
    if options.json {
        let report = json!({
            "model": options.model,
            "dtype": dtype,
            "input_shape": [height, width, channels],
            "classes": classes,
            "arena_bytes": model.arena_size(),
            "images": images.iter().zip(&predictions).map(|(image, p)| json!({
                "input": image.name,
                "class": p.class,
                "name": model.class_name(p.class),
                "probability": p.probability,
                "label": image.label,
                "microseconds": p.micros,
            })).collect::<Vec<_>>(),
            "labelled": labelled,
            "accuracy": (labelled > 0).then(|| correct as f64 / labelled as f64),
            "mean_microseconds": mean_micros,
            "min_microseconds": times.iter().min(),
            "max_microseconds": times.iter().max(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if labelled > 0 {
        eprintln!(
            "top-1 {:.2} % ({correct} of {labelled} labelled images)",
            100.0 * correct as f64 / labelled as f64
        );
    }
    if let Some(mean) = mean_micros {
        eprintln!(
            "inference: mean {mean} us, min {} us, max {} us over {} images",
            times.iter().min().unwrap_or(&0),
            times.iter().max().unwrap_or(&0),
            times.len()
        );
    }
    Ok(())
}

/// Appends at most `room` images of `input` (a file or a directory), at the model's
/// `height × width`.
fn read_input(
    input: &Path,
    height: usize,
    width: usize,
    room: usize,
    images: &mut Vec<Image>,
) -> Result<()> {
    if input.is_dir() {
        for file in image_files_under(input)? {
            if images.len() >= room {
                break;
            }
            images.push(read_image(&file, height, width)?);
        }
        return Ok(());
    }
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    if is_image_name(input) {
        images.push(image_of_bytes(input, &bytes, height, width)?);
        return Ok(());
    }
    if !input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("bin") || e.eq_ignore_ascii_case("gz"))
    {
        bail!(
            "{}: not an image (.png, .jpg), a directory or a CIFAR-10 batch (.bin, .bin.gz)",
            input.display()
        );
    }
    let batch = Dataset::cifar_from_file_bytes(input, &bytes)?;
    if (batch.height, batch.width) != (height, width) {
        bail!(
            "{}: CIFAR-10 images are {}x{}, the model takes {height}x{width}",
            input.display(),
            batch.height,
            batch.width
        );
    }
    for i in 0..batch.len().min(room) {
        images.push(Image {
            name: format!("{}:{i}", input.display()),
            pixels: batch.image(i).to_vec(),
            label: Some(usize::from(batch.labels[i])),
        });
    }
    Ok(())
}

fn read_image(file: &Path, height: usize, width: usize) -> Result<Image> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    image_of_bytes(file, &bytes, height, width)
}

fn image_of_bytes(file: &Path, bytes: &[u8], height: usize, width: usize) -> Result<Image> {
    let decoded = decode_image(file, bytes)?;
    Ok(Image {
        name: file.display().to_string(),
        pixels: fit_image(decoded, height, width).into_raw(),
        label: None,
    })
}

fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

/// The PNG and JPEG files under `dir`, at any depth, in sorted path order (an image
/// folder's `test/` gives `tinyres eval`'s order: classes, then files, by name).
fn image_files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            files.extend(image_files_under(&entry)?);
        } else if is_image_name(&entry) {
            files.push(entry);
        }
    }
    Ok(files)
}
