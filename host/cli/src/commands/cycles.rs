//! `tinyres cycles`: the cycle model on any bare-metal ELF under QEMU, so that another
//! runtime's build (CMSIS-NN's kernels, a TensorFlow Lite Micro application) is
//! measured exactly as tinyres's firmware is.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use tinyres_compile::report;
use tinyres_device::cycles::ASSUMPTIONS;
use tinyres_device::qemu::{self, Board};

use super::print_json;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A bare-metal ELF for the board's memory map (code at 0x0, RAM at 0x20000000 on
    /// the mps2 boards), ending with a semihosting exit.
    elf: PathBuf,
    /// The board: mps2-an386 (Cortex-M4), mps2-an385 (Cortex-M3) or mps2-an385-v6m (an
    /// ARMv6-M program on the M3, timed as a Cortex-M0+): the boards with a cycle model.
    #[arg(long, default_value = "mps2-an386")]
    board: String,
    /// Seconds the run may take.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Functions listed, the costliest first (all of them with --json).
    #[arg(long, default_value_t = 12)]
    functions: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn command(args: &Args) -> Result<()> {
    let board = Board::by_name(&args.board)?;
    let run = qemu::estimate_elf(&board, &args.elf, Duration::from_secs(args.timeout))?;
    if args.json {
        print_json(&serde_json::json!({
            "board": board,
            "elf": args.elf,
            "instructions": run.instructions,
            "cycles_estimated": run.cycles,
            "intervals": run.intervals.iter().map(|&(i, c)| serde_json::json!({
                "instructions": i, "cycles_estimated": c,
            })).collect::<Vec<_>>(),
            "exit_success": run.success,
            "functions": run.functions,
            "assumptions": ASSUMPTIONS,
        }))?;
    } else {
        println!(
            "{} on {} ({})\n",
            args.elf.display(),
            board.name,
            board.core
        );
        println!(
            "{:>8} {:>16} {:>16} {:>8}",
            "span", "instructions", "cycles (est.)", "CPI"
        );
        for (k, &(instructions, cycles)) in run.intervals.iter().enumerate() {
            println!(
                "{:>8} {:>16} {:>16} {:>8.3}",
                k + 1,
                report::thousands(instructions),
                report::thousands(cycles),
                cycles as f64 / instructions.max(1) as f64
            );
        }
        println!(
            "{:>8} {:>16} {:>16} {:>8.3}",
            "run",
            report::thousands(run.instructions),
            report::thousands(run.cycles),
            run.cycles as f64 / run.instructions.max(1) as f64
        );
        println!("\nspans: between consecutive reads of SysTick's counter (0xE000E018)\n");
        print!("{}", function_table(&run.functions, args.functions));
        println!("cycles: {ASSUMPTIONS}");
    }
    if !run.success {
        bail!("{} did not exit with success", args.elf.display());
    }
    Ok(())
}

/// The costliest `count` functions: estimated cycles, their share of all the
/// functions', instructions and CPI; or, from a trace without cycles, instructions and
/// their share.
pub fn function_table(functions: &[tinyres_device::cycles::FunctionCost], count: usize) -> String {
    let estimated = functions.iter().all(|f| f.cycles.is_some());
    let cost = |f: &tinyres_device::cycles::FunctionCost| f.cycles.unwrap_or(f.instructions);
    let total = functions.iter().map(cost).sum::<u64>().max(1);
    let mut s = if estimated {
        format!(
            "{:>14} {:>7} {:>14} {:>7}  function\n",
            "cycles (est.)", "share", "instructions", "CPI"
        )
    } else {
        format!("{:>14} {:>7}  function\n", "instructions", "share")
    };
    for f in functions.iter().take(count) {
        let share = 100.0 * cost(f) as f64 / total as f64;
        s += &match f.cycles.filter(|_| estimated) {
            Some(cycles) => format!(
                "{:>14} {:>6.1}% {:>14} {:>7.3}  {}\n",
                report::thousands(cycles),
                share,
                report::thousands(f.instructions),
                cycles as f64 / f.instructions.max(1) as f64,
                f.name
            ),
            None => format!(
                "{:>14} {:>6.1}%  {}\n",
                report::thousands(f.instructions),
                share,
                f.name
            ),
        };
    }
    if functions.len() > count {
        s += &format!("{:>14} ({} more functions)\n", "", functions.len() - count);
    }
    s
}
