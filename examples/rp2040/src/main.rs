//! tinyres-core on the RP2040 (Raspberry Pi Pico: Cortex-M0+, ARMv6-M) with embassy-rp.
//!
//! A task classifies the camera's frame buffer ten times a second. Holding a button
//! wired from GPIO 15 to ground teaches a new class from the frames it sees, and the
//! Pico's LED (GPIO 25) lights while that class is recognised. Each lesson is saved to
//! the last 8 KiB of the 2 MiB flash; after a reset or a power cut the device starts
//! from it.
#![no_std]
#![no_main]

use defmt::{error, info, unwrap};
use embassy_executor::Spawner;
use embassy_rp::flash::{Blocking, Flash};
use embassy_rp::gpio::{Input, Level, Output, Pull};
use embassy_rp::peripherals::FLASH;
use embassy_time::Timer;
use static_cell::StaticCell;
use tinyres_core::app::{ActiveLow, App, AppError, Labeled, FINETUNE_SGD};
use tinyres_core::learn::LastLayer;
use tinyres_core::persist::LayerStore;
use tinyres_core::{include_model, Arena, Interpreter, Model};
use {defmt_rtt as _, panic_probe as _};

/// Any blob from `tinyres compile`; this one takes 8×8 RGB frames.
static MODEL: &[u8] = include_model!("../../../core/tests/fixtures/bottleneck-int8.trm");
/// The camera's frame buffer (a DMA target on a real camera; a fixed gradient here).
static FRAME: [u8; 8 * 8 * 3] = gradient();

/// The Pico's flash.
const FLASH_BYTES: usize = 2 * 1024 * 1024;
/// A slot is one 4 KiB sector, the RP2040's erase unit.
const SLOT_BYTES: u32 = 4096;
/// The head store: the last two sectors, as offsets from the start of flash.
/// `memory.x` keeps the code below them.
const STORE_OFFSET: u32 = FLASH_BYTES as u32 - 2 * SLOT_BYTES;

/// Room for 64 features and 12 classes (the pooled features of a ResNet-8).
type Head = LastLayer<64, 12>;
type Button = ActiveLow<Input<'static>>;
type HeadFlash = Flash<'static, FLASH, Blocking, FLASH_BYTES>;
type Classifier = App<'static, 'static, 'static, Button, Output<'static>, HeadFlash, 64, 12>;

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    let p = embassy_rp::init(Default::default());
    let button = ActiveLow(Input::new(p.PIN_15, Pull::Up));
    let led = Output::new(p.PIN_25, Level::Low);
    let flash = HeadFlash::new_blocking(p.FLASH);
    match open(button, led, flash) {
        Ok(app) => spawner.spawn(unwrap!(classifier(app))),
        Err(e) => error!("cannot start: {}", e),
    }
}

/// The network in a static arena, the head from the model's classifier or from the
/// newest lesson in flash.
fn open(button: Button, led: Output<'static>, flash: HeadFlash) -> Result<Classifier, AppError> {
    // At least the model's arena (`tinyres inspect` prints it).
    static ARENA: StaticCell<Arena<1024>> = StaticCell::new();
    static HEAD: StaticCell<Head> = StaticCell::new();
    let model = Model::parse(MODEL)?;
    let net = Interpreter::new(model, ARENA.init(Arena::new()).as_mut_slice())?;
    let store = LayerStore::new(flash, STORE_OFFSET, SLOT_BYTES)?;
    let head = HEAD.init(Head::EMPTY);
    let (app, restored) = App::new(net, head, store, button, led, FINETUNE_SGD)?;
    info!("restored from flash: {}", restored);
    Ok(app)
}

#[embassy_executor::task]
async fn classifier(mut app: Classifier) {
    loop {
        match app.step(&FRAME) {
            Ok(step) => {
                info!("class {}", step.class);
                if let Some(Labeled::Added { .. } | Labeled::Refined { .. }) = step.labeled {
                    // Power-safe: a cut during the save keeps the previous lesson.
                    if let Err(e) = app.save() {
                        error!("save: {}", e);
                    }
                }
            }
            Err(e) => error!("step: {}", e),
        }
        Timer::after_millis(100).await;
    }
}

const fn gradient() -> [u8; 8 * 8 * 3] {
    let mut frame = [0; 8 * 8 * 3];
    let mut i = 0;
    while i < frame.len() {
        frame[i] = (i * 5 % 256) as u8;
        i += 1;
    }
    frame
}
