//! tinyres-core in an RTIC firmware on the nRF52840-DK (nRF52840, Cortex-M4F).
//!
//! A software task classifies the camera's frame buffer ten times a second. Holding
//! button 1 teaches a new class from the frames it sees, and LED 1 lights while that
//! class is recognised. Each lesson is saved to the last two 4 KiB flash pages through
//! the NVMC; after a reset or a power cut the device starts from it.
#![no_std]
#![no_main]

use defmt::{error, info};
use nrf52840_hal::gpio::{Input, Output, Pin, PullUp, PushPull};
use nrf52840_hal::nvmc::Nvmc;
use nrf52840_hal::pac::NVMC;
use rtic_monotonics::nrf::timer::prelude::*;
use tinyres_core::app::{ActiveLow, App, Labeled};
use tinyres_core::include_model;
use tinyres_core::learn::LastLayer;
use {defmt_rtt as _, panic_probe as _};

/// Any blob from `tinyres compile`; this one takes 8×8 RGB frames.
static MODEL: &[u8] = include_model!("../../../core/tests/fixtures/bottleneck-int8.trm");
/// The camera's frame buffer (a DMA target on a real camera; a fixed gradient here).
static FRAME: [u8; 8 * 8 * 3] = gradient();

/// The head store: the last two 4 KiB pages of the 1 MiB flash (the NVMC erases a page
/// at a time). `memory.x` keeps the code below them.
const STORE_ADDRESS: usize = 0x000F_E000;
/// One page per slot.
const SLOT_BYTES: u32 = 4096;

/// Room for 64 features and 12 classes (the pooled features of a ResNet-8).
type Head = LastLayer<64, 12>;
type Button = ActiveLow<Pin<Input<PullUp>>>;
type Led = ActiveLow<Pin<Output<PushPull>>>;
type Classifier = App<'static, 'static, 'static, Button, Led, Nvmc<NVMC>, 64, 12>;

nrf_timer0_monotonic!(Mono, 1_000_000);

#[rtic::app(device = nrf52840_hal::pac, dispatchers = [SWI0_EGU0])]
mod firmware {
    use nrf52840_hal::gpio::{p0, Level};
    use tinyres_core::app::{AppError, FINETUNE_SGD};
    use tinyres_core::persist::LayerStore;
    use tinyres_core::{Arena, Interpreter, Model};

    use super::*;

    #[shared]
    struct Shared {}

    #[local]
    struct Local {
        classifier: Option<Classifier>,
    }

    /// The network in a static arena (at least the model's: `tinyres inspect` prints
    /// it), the head from the model's classifier or from the newest lesson in flash.
    #[init(local = [arena: Arena<1024> = Arena::new(), head: Head = Head::EMPTY])]
    fn init(cx: init::Context) -> (Shared, Local) {
        Mono::start(cx.device.TIMER0, Priority::rtic_default());
        let port = p0::Parts::new(cx.device.P0);
        // Button 1 and LED 1 are wired active low.
        let button = ActiveLow(port.p0_11.into_pullup_input().degrade());
        let led = ActiveLow(port.p0_13.into_push_pull_output(Level::High).degrade());
        // SAFETY: STORE_ADDRESS..+2 pages is flash that memory.x leaves to the store
        // (outside the code and data), page-aligned, and `init` runs once, so this is
        // the only reference to it.
        let store = unsafe { core::slice::from_raw_parts_mut(STORE_ADDRESS as *mut u8, 2 * 4096) };
        let flash = Nvmc::new(cx.device.NVMC, store);
        let open = || -> Result<Classifier, AppError> {
            let net = Interpreter::new(Model::parse(MODEL)?, cx.local.arena.as_mut_slice())?;
            let store = LayerStore::new(flash, 0, SLOT_BYTES)?;
            let (app, restored) = App::new(net, cx.local.head, store, button, led, FINETUNE_SGD)?;
            info!("restored from flash: {}", restored);
            Ok(app)
        };
        let classifier = match open() {
            Ok(app) => {
                classify::spawn().ok();
                Some(app)
            }
            Err(e) => {
                error!("cannot start: {}", e);
                None
            }
        };
        (Shared {}, Local { classifier })
    }

    #[task(local = [classifier], priority = 1)]
    async fn classify(cx: classify::Context) {
        let Some(app) = cx.local.classifier else {
            return;
        };
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
            Mono::delay(100.millis()).await;
        }
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
