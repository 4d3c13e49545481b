//! `.ci/install-qemu` on a machine where installing Debian's QEMU would remove a
//! package (a newer qemu-utils, as a fresh machine had): it must remove and downgrade
//! nothing. `apt-get`, `apt-cache` and `dpkg-deb` are fakes on PATH that log every call
//! and answer as that machine's did; the links go to a scratch directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory of its own for this test.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tinyres-install-qemu-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn installing_qemu_where_apt_would_remove_a_package_removes_nothing() {
    let dir = scratch();
    let (fakes, bin, prefix, log) = (
        dir.join("fakes"),
        dir.join("bin"),
        dir.join("qemu"),
        dir.join("calls.log"),
    );
    std::fs::create_dir_all(&fakes).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    let log_call = format!("echo \"$(basename \"$0\") $*\" >> '{}'\n", log.display());
    // apt: installing qemu-system-arm would remove qemu-utils (its simulation says so,
    // as on that machine); downloads are empty .deb files. The simulation writes on after
    // its `Remv` line, as apt does: a reader that stops at the first match fails it.
    write_script(
        &fakes.join("apt-get"),
        &format!(
            "{log_call}case \"$*\" in\n\
             *'-s install qemu-system-arm'*) echo 'Remv qemu-utils [1:10.0.2+ds-1~bpo12+1]'; \
             sleep 0.2; echo 'Inst qemu-system-arm (1:7.2+dfsg-7+deb12u18 Debian:12.12/stable [amd64])' ;;\n\
             download*) for p in \"$@\"; do case $p in *=*) touch \"${{p%%=*}}.deb\" ;; esac; done ;;\n\
             esac\n"
        ),
    );
    write_script(
        &fakes.join("apt-cache"),
        &format!(
            "{log_call}case $1 in\n\
             policy) echo '  Candidate: 1:7.2+dfsg-7+deb12u18' ;;\n\
             depends) echo 'qemu-system-arm'; echo '  Depends: libfdt1'; \
             echo '  Depends: qemu-system-common' ;;\n\
             esac\n"
        ),
    );
    // Unpacking a package gives the two commands, which print a version.
    write_script(
        &fakes.join("dpkg-deb"),
        &format!(
            "{log_call}mkdir -p \"$3/usr/bin\"\n\
             for c in qemu-system-arm qemu-system-aarch64; do \
             printf '#!/bin/sh\\necho \"QEMU emulator version 7.2.18 (fake)\"\\n' > \"$3/usr/bin/$c\"; \
             chmod +x \"$3/usr/bin/$c\"; done\n"
        ),
    );
    // The commands the script and the fakes use besides those, linked one by one: a
    // PATH with the system's directories would show this machine's own QEMU and cross
    // compilers, if it has them, and the script would rightly do nothing.
    let tools = dir.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    for tool in [
        "bash", "awk", "grep", "sort", "tr", "mktemp", "chmod", "mkdir", "rm", "ln", "head",
        "basename", "touch", "sleep",
    ] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} is not in /usr/bin or /bin"));
        std::os::unix::fs::symlink(found, tools.join(tool)).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/install-qemu");
    let path = format!("{}:{}:{}", fakes.display(), bin.display(), tools.display());
    let output = Command::new(tools.join("bash"))
        .arg(&script)
        .env("PATH", &path)
        .env("QEMU_PREFIX", &prefix)
        .env("QEMU_BIN_DIR", &bin)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let calls = std::fs::read_to_string(&log).unwrap();
    // Every install refuses to remove, and nothing removes, purges or downgrades.
    for call in calls.lines().filter(|c| c.starts_with("apt-get")) {
        let words: Vec<&str> = call.split_whitespace().collect();
        assert!(
            !words.iter().any(|w| matches!(
                *w,
                "remove"
                    | "purge"
                    | "autoremove"
                    | "--allow-downgrades"
                    | "--allow-remove-essential"
            )),
            "{call}"
        );
        if words.contains(&"install") && !words.contains(&"-s") {
            assert!(words.contains(&"--no-remove"), "{call}");
            assert!(
                !words.contains(&"qemu-system-arm"),
                "installs QEMU despite the removal: {call}"
            );
        }
    }
    assert!(
        stdout.contains("apt would remove qemu-utils"),
        "does not say why it unpacks: {stdout}"
    );
    // QEMU unpacked into the prefix and linked, and the script ran it.
    assert!(bin.join("qemu-system-arm").exists() && bin.join("qemu-system-aarch64").exists());
    assert!(
        stdout.contains("QEMU emulator version 7.2.18 (fake)"),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
