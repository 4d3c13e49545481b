//! The `tinyres` binary as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

use tinyres_compile::arch::Architecture;
use tinyres_compile::writer::Encoding;

fn tinyres(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tinyres"))
        .args(args)
        .output()
        .expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyres-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn plan_resnet8_int8_reports_the_mlperf_budget() {
    let out = tinyres(&["plan", "--arch", "resnet8", "--dtype", "int8", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let model = &v["model"];
    assert_eq!(model["macs"], 12_505_728);
    assert_eq!(model["params"], 77_706);
    // Streamed (the default): one 32×32×16 buffer and 2 KiB of row windows, reached in
    // the first block (two rows a step) and the second (one).
    assert_eq!(model["arena_bytes"], 18 * 1024);
    assert_eq!(model["peak_layer"], 1);
    assert_eq!(model["streamed_image"], true);
    assert!(model["flash_bytes"].as_u64().unwrap() <= 90_000);
    assert_eq!(model["layers"].as_array().unwrap().len(), 11);

    let table = tinyres(&["plan"]);
    assert!(table.status.success());
    let text = stdout(&table);
    assert!(
        text.contains("arena peak   18,432 B (18.0 KiB), at layer 1"),
        "{text}"
    );
    assert!(text.contains("streamed     4 groups"), "{text}");

    let fast = tinyres(&["plan", "--memory", "fast"]);
    assert!(
        stdout(&fast).contains("arena peak   32,768 B (32.0 KiB)"),
        "{}",
        stdout(&fast)
    );

    // Winograd filters on the four 3×3 stride-1 layers of 16 to 64 channels: the same
    // arena, 24 · in_c · out_c bytes more in flash for each.
    let out = tinyres(&["plan", "--winograd", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let winograd: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let layers = winograd["model"]["layers"].as_array().unwrap();
    let with_filters: Vec<u64> = layers
        .iter()
        .filter(|l| l["op"].as_str().unwrap().contains("winograd"))
        .map(|l| l["output"][2].as_u64().unwrap())
        .collect();
    assert_eq!(with_filters, [16, 16, 32, 64]);
    assert_eq!(winograd["model"]["arena_bytes"], 18 * 1024);
    let extra =
        winograd["model"]["flash_bytes"].as_u64().unwrap() - model["flash_bytes"].as_u64().unwrap();
    assert_eq!(extra, 24 * (16 * 16 * 2 + 32 * 32 + 64 * 64));
}

#[test]
fn board_fit_checks_report_the_figures_and_refuse_what_does_not_fit() {
    // ResNet-8 int8 on an STM32F411: 18 KiB of arena and the M4's 12.75 KiB of stack in
    // 128 KiB of RAM; blob and engine in 512 KiB of flash.
    let out = tinyres(&["plan", "--board", "stm32f411", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let fit = &v["fit"];
    assert_eq!(fit["arena"], 18 * 1024);
    assert_eq!(fit["stack"], fit["core"]["stack"]);
    assert_eq!(fit["ram"], 128 * 1024);
    assert_eq!(fit["blob"], v["model"]["flash_bytes"]);
    assert_eq!(fit["core"]["kernel"], "cortex-m-dsp");

    // A budget too small for the arena and the stack: refused, with the figures, and
    // the blob is not written.
    let blob = temp("does-not-fit.trm");
    let out = tinyres(&[
        "plan",
        "--board",
        "rp2040",
        "--ram",
        "20K",
        "-o",
        blob.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let error = stderr(&out);
    assert!(
        error.contains("does not fit rp2040")
            && error.contains("arena 18,432 + stack")
            && error.contains("of 20,480 B")
            && !error.contains("flash"),
        "{error}"
    );
    assert!(!blob.exists());

    // inspect shows the verdict, then exits with failure.
    let fits = temp("fits.trm");
    assert!(tinyres(&["plan", "-o", fits.to_str().unwrap()])
        .status
        .success());
    let out = tinyres(&[
        "inspect",
        fits.to_str().unwrap(),
        "--board",
        "stm32g071",
        "--flash",
        "64K",
    ]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).contains("does not fit stm32g071"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("blob "), "{}", stderr(&out));

    let out = tinyres(&["plan", "--board", "stm32f999"]);
    assert!(stderr(&out).contains("unknown board 'stm32f999'; known: stm32f411"));
    let out = tinyres(&["plan", "--ram", "64K"]);
    assert!(stderr(&out).contains("--board"), "{}", stderr(&out));
}

#[test]
fn plan_accepts_every_family_member_and_option() {
    for args in [
        &["plan", "--arch", "resnet110", "--dtype", "f16"][..],
        &["plan", "--arch", "plain20"],
        &["plan", "--arch", "resnet20", "--shortcut", "C"],
        &["plan", "--arch", "resnet29-bottleneck", "--shortcut", "A"],
    ] {
        let out = tinyres(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn plan_writes_a_blob_that_inspect_reads() {
    let path = temp("resnet8-untrained.trm");
    let out = tinyres(&[
        "plan",
        "--arch",
        "resnet8",
        "-o",
        path.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let planned: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let inspected = tinyres(&["inspect", path.to_str().unwrap(), "--json"]);
    let inspected: serde_json::Value = serde_json::from_str(&stdout(&inspected)).unwrap();
    assert_eq!(planned["model"], inspected);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        inspected["flash_bytes"].as_u64().unwrap()
    );

    let out = tinyres(&["plan", "-o", "/nonexistent-dir/x.trm"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot write /nonexistent-dir/x.trm"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_architecture_is_a_one_line_error() {
    let out = tinyres(&["plan", "--arch", "vgg16"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("vgg16") && err.contains("resnet8"), "{err}");
}

#[test]
fn inspect_reads_a_blob_and_names_corruption() {
    let network = Architecture::by_name("resnet20")
        .unwrap()
        .network(7)
        .unwrap();
    let path = temp("resnet20.trm");
    let bytes = network.to_blob(Encoding::F16).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let out = tinyres(&["inspect", path.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["dtype"], "f16");
    assert_eq!(v["flash_bytes"], bytes.len());

    let mut corrupt = bytes.clone();
    corrupt[100] ^= 0x40;
    std::fs::write(&path, &corrupt).unwrap();
    let out = tinyres(&["inspect", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );

    std::fs::write(&path, &bytes[..1000]).unwrap();
    let out = tinyres(&["inspect", path.to_str().unwrap()]);
    assert!(
        stderr(&out).contains("truncated: needs"),
        "{}",
        stderr(&out)
    );

    let out = tinyres(&["inspect", "/nonexistent/model.trm"]);
    assert!(
        stderr(&out).contains("cannot read /nonexistent/model.trm"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn eval_reports_accuracy_per_class_and_writes_predictions() {
    let path = temp("eval-resnet8.trm");
    let out = tinyres(&["plan", "--arch", "resnet8", "-o", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = temp("predictions.csv");
    let out = tinyres(&[
        "eval",
        path.to_str().unwrap(),
        "--data",
        "synthetic",
        "--limit",
        "30",
        "--json",
        "--predictions",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["count"], 30);
    let accuracy = v["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert_eq!(v["per_class"].as_array().unwrap().len(), 10);
    assert_eq!(v["per_class"][4]["name"], "disc");
    let confusion: u64 = v["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(confusion, 30);
    let rows = std::fs::read_to_string(&csv).unwrap();
    let mut lines = rows.lines();
    assert_eq!(
        lines.next(),
        Some("index,file,label,predicted,label_name,predicted_name")
    );
    let first = lines.next().unwrap();
    assert!(first.starts_with("0,,"), "{first}");
    assert_eq!(lines.count(), 29);

    let out = tinyres(&["eval", "/nonexistent/model.onnx", "--data", "synthetic"]);
    assert!(
        stderr(&out).contains("/nonexistent/model.onnx: cannot read"),
        "{}",
        stderr(&out)
    );
    let out = tinyres(&["eval", path.to_str().unwrap(), "--data", "/nonexistent"]);
    assert!(
        stderr(&out).contains("/nonexistent: no such file"),
        "{}",
        stderr(&out)
    );
}

/// `n` synthetic 32×32 images as PNG files: in `dir/<class>/` or, with `loose`,
/// directly in `dir`.
fn write_pngs(dir: &std::path::Path, n: usize, loose: bool) {
    let data = tinyres_data::synthetic(n, 3);
    for i in 0..n {
        let class_dir = if loose {
            dir.to_path_buf()
        } else {
            dir.join(&data.class_names[usize::from(data.labels[i])])
        };
        std::fs::create_dir_all(&class_dir).unwrap();
        image::RgbImage::from_raw(32, 32, data.image(i).to_vec())
            .unwrap()
            .save(class_dir.join(format!("{i:03}.png")))
            .unwrap();
    }
}

/// An image folder's predictions name each image's file, and calibration takes any
/// folder of images: one with only a test split, class folders alone, loose images.
#[test]
fn image_folders_name_their_files_in_predictions_and_any_folder_calibrates() {
    let blob = temp("folder-resnet8.trm");
    let out = tinyres(&["plan", "--arch", "resnet8", "-o", blob.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let test_only = temp("test-only");
    write_pngs(&test_only.join("test"), 12, false);
    let csv = temp("folder-predictions.csv");
    let out = tinyres(&[
        "eval",
        blob.to_str().unwrap(),
        "--data",
        test_only.to_str().unwrap(),
        "--predictions",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = std::fs::read_to_string(&csv).unwrap();
    let files: Vec<&str> = rows
        .lines()
        .skip(1)
        .map(|row| row.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(files.len(), 12);
    for file in &files {
        let (class, name) = file.split_once('/').unwrap();
        let path = test_only.join("test").join(class).join(name);
        assert!(path.is_file(), "{rows}");
    }

    let classes_only = temp("classes-only");
    write_pngs(&classes_only, 12, false);
    let loose = temp("loose-images");
    write_pngs(&loose, 12, true);
    let empty = temp("no-images");
    std::fs::create_dir_all(&empty).unwrap();
    let onnx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/models/torch_option_a.onnx");
    let compile = |calib: &std::path::Path| {
        tinyres(&[
            "compile",
            onnx.to_str().unwrap(),
            "--dtype",
            "int8",
            "--calib",
            calib.to_str().unwrap(),
            "-o",
            temp("calibrated.trm").to_str().unwrap(),
            "--json",
        ])
    };
    for calib in [&test_only, &classes_only, &loose] {
        let out = compile(calib);
        assert!(
            out.status.success(),
            "{}: {}",
            calib.display(),
            stderr(&out)
        );
        let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(v["calibration"]["images"], 12, "{v}");
    }
    let out = compile(&empty);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-images"), "{}", stderr(&out));
}

#[test]
fn run_boots_the_firmware_and_matches_the_host() {
    let path = temp("run-resnet8.trm");
    assert!(tinyres(&["plan", "-o", path.to_str().unwrap()])
        .status
        .success());
    let out = tinyres(&[
        "run",
        "--model",
        path.to_str().unwrap(),
        "--data",
        "synthetic",
        "--limit",
        "3",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["board"]["name"], "mps2-an386");
    assert_eq!(v["matches_host"], true);
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for (i, image) in images.iter().enumerate() {
        assert_eq!(image["index"], i);
        assert!(image["class"].as_u64().unwrap() < 10);
        assert!(image["instructions"].as_u64().unwrap() > 1_000_000);
    }
    let out = tinyres(&[
        "run",
        "--board",
        "esp32",
        "--model",
        path.to_str().unwrap(),
        "--data",
        "synthetic",
    ]);
    assert!(
        stderr(&out).contains("unknown board \"esp32\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_finetune_learns_on_the_device_and_survives_a_reboot() {
    let path = temp("nine-classes.trm");
    assert!(
        tinyres(&["plan", "--classes", "9", "-o", path.to_str().unwrap()])
            .status
            .success()
    );
    let flash_dir = temp("flash");
    let out = tinyres(&[
        "run",
        "--model",
        path.to_str().unwrap(),
        "--data",
        "synthetic",
        "--limit",
        "10",
        "--finetune",
        "synthetic",
        "--new-class",
        "vgradient",
        "--shots",
        "2",
        "--flash-dir",
        flash_dir.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["new_class"]["index"], 9);
    assert_eq!(v["shots"], 2);
    assert_eq!(v["persisted"], true);
    assert_eq!(v["saved"][1], 1, "first save has sequence 1");
    assert_eq!(
        std::fs::metadata(flash_dir.join("tinyres-flash.bin"))
            .unwrap()
            .len(),
        8192
    );

    // A ten-class model has no free class index in the synthetic labels.
    let ten = temp("ten-classes.trm");
    assert!(tinyres(&["plan", "-o", ten.to_str().unwrap()])
        .status
        .success());
    let out = tinyres(&[
        "run",
        "--model",
        ten.to_str().unwrap(),
        "--data",
        "synthetic",
        "--limit",
        "2",
        "--finetune",
        "synthetic",
    ]);
    assert!(
        stderr(&out).contains("no image to learn from is labeled 10"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn flash_dry_run_lays_out_firmware_model_and_head_store() {
    let path = temp("flash-resnet8.trm");
    assert!(tinyres(&["plan", "-o", path.to_str().unwrap()])
        .status
        .success());
    let model = path.to_str().unwrap();
    let out = tinyres(&[
        "flash",
        "--chip",
        "STM32F746NGHx",
        "--model",
        model,
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let layout = &v["layout"];
    assert_eq!(layout["flash"]["start"], 0x0800_0000u64);
    assert_eq!(layout["head_store"]["end"], 0x0810_0000u64);
    let model_range = (
        layout["model"]["start"].as_u64().unwrap(),
        layout["model"]["end"].as_u64().unwrap(),
    );
    assert_eq!(
        model_range.1 - model_range.0,
        std::fs::metadata(&path).unwrap().len()
    );
    assert!(model_range.1 <= layout["head_store"]["start"].as_u64().unwrap());
    // The STM32F746's last sectors are 256 KiB: each slot gets one, and the model
    // starts on the sector boundary below them.
    let range = |v: &serde_json::Value| (v["start"].as_u64().unwrap(), v["end"].as_u64().unwrap());
    assert_eq!(range(&layout["head_slots"][0]), (0x0808_0000, 0x080C_0000));
    assert_eq!(range(&layout["head_slots"][1]), (0x080C_0000, 0x0810_0000));
    assert_eq!(model_range.0, 0x0804_0000);

    // The nRF52840 has a firmware board: its fixed partitions (firmware/build.rs),
    // whatever the model's size, and an image partition the test images go to.
    let out = tinyres(&[
        "flash",
        "--chip",
        "nRF52840_xxAA",
        "--model",
        model,
        "--data",
        "synthetic",
        "--limit",
        "5",
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let layout = &v["layout"];
    assert_eq!(layout["board"], "nrf52840");
    assert_eq!(range(&layout["ram"]), (0x2000_0000, 0x2004_0000));
    assert_eq!(range(&layout["head_slots"][0]), (0xF_E000, 0xF_F000));
    assert_eq!(range(&layout["head_slots"][1]), (0xF_F000, 0x10_0000));
    assert_eq!(layout["model"]["start"], 0x4_0000u64);
    assert_eq!(range(&layout["images"]), (0x8_0000, 0xF_E000));
    assert_eq!(v["images"], 5);
    // Header and labels padded to 16 bytes, then 5 images of 32×32×3.
    assert_eq!(v["image_bytes"], 32 + 5 * 3072);
    // Examples to learn from go first: shots of the model's next class (a 9-class
    // model learns class 9), each followed by its share of the rehearsal images.
    let nine = temp("flash-resnet8-9.trm");
    assert!(
        tinyres(&["plan", "--classes", "9", "-o", nine.to_str().unwrap()])
            .status
            .success()
    );
    let learning_layout = |rehearsal: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "flash",
            "--chip",
            "nRF52840_xxAA",
            "--model",
            nine.to_str().unwrap(),
            "--data",
            "synthetic",
            "--limit",
            "4",
            "--finetune",
            "synthetic",
            "--shots",
            "3",
            "--dry-run",
            "--json",
        ];
        args.extend_from_slice(rehearsal);
        let out = tinyres(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_str(&stdout(&out)).unwrap()
    };
    let v = learning_layout(&["--rehearsal", "3"]);
    assert_eq!(
        (v["learn_from"].clone(), v["images"].clone()),
        (6.into(), 4.into())
    );
    assert_eq!(v["image_bytes"], 32 + 10 * 3072);
    // By default 10 rehearsal images per shot, where the partition holds them.
    assert_eq!(learning_layout(&[])["learn_from"], 33);
    // Images the model cannot take are refused before anything is written.
    let small = Architecture {
        input: (16, 16, 3),
        ..Architecture::by_name("resnet8").unwrap()
    };
    let arch_file = temp("flash-16x16.json");
    std::fs::write(&arch_file, serde_json::to_string(&small).unwrap()).unwrap();
    let small_model = temp("flash-16x16.trm");
    let out = tinyres(&[
        "plan",
        "--arch-file",
        arch_file.to_str().unwrap(),
        "-o",
        small_model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tinyres(&[
        "flash",
        "--chip",
        "nRF52840_xxAA",
        "--model",
        small_model.to_str().unwrap(),
        "--data",
        "synthetic",
        "--dry-run",
    ]);
    assert!(
        stderr(&out).contains("expects (16, 16, 3)"),
        "{}",
        stderr(&out)
    );
    let out = tinyres(&[
        "flash",
        "--chip",
        "STM32F746NGHx",
        "--data",
        "synthetic",
        "--dry-run",
    ]);
    assert!(
        stderr(&out).contains("no tinyres firmware board"),
        "{}",
        stderr(&out)
    );

    let text = tinyres(&[
        "flash",
        "--chip",
        "nRF52840_xxAA",
        "--model",
        model,
        "--dry-run",
    ]);
    let model_bytes = std::fs::metadata(model).unwrap().len();
    assert!(
        stdout(&text).contains(&format!("would write {model_bytes} bytes of model")),
        "{}",
        stdout(&text)
    );

    let out = tinyres(&[
        "flash",
        "--chip",
        "NoSuchChip",
        "--model",
        model,
        "--dry-run",
    ]);
    assert!(
        stderr(&out).contains("unknown chip \"NoSuchChip\""),
        "{}",
        stderr(&out)
    );
    let out = tinyres(&["flash", "--chip", "STM32F746NGHx", "--dry-run"]);
    assert!(
        stderr(&out).contains("nothing to flash"),
        "{}",
        stderr(&out)
    );
    let not_elf = temp("not-an-elf");
    std::fs::write(&not_elf, b"hello").unwrap();
    let out = tinyres(&[
        "flash",
        "--chip",
        "STM32F746NGHx",
        "--firmware",
        not_elf.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(
        stderr(&out).contains("not a 32-bit ELF"),
        "{}",
        stderr(&out)
    );
    // No probe on this machine: a clear error, not a hang or a panic.
    let out = tinyres(&["flash", "--chip", "STM32F746NGHx", "--model", model]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("through a debug probe"),
        "{}",
        stderr(&out)
    );
}
