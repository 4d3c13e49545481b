//! The host's architecture family, written as blobs and run by the engine: every
//! member and option loads, fits its planned arena and classifies; f16 weights track
//! f32 within the documented bound.

use tinyres_compile::arch::{Architecture, Block, Shortcut};
use tinyres_compile::writer::{AlignedBlob, Encoding, Network};
use tinyres_core::{Interpreter, Model};

fn logits(network: &Network, encoding: Encoding<'_>, pixels: &[u8]) -> Vec<f32> {
    let blob = AlignedBlob::new(&network.to_blob(encoding).unwrap());
    let model = Model::parse(blob.as_bytes()).unwrap();
    let mut arena = vec![0u8; model.required_arena()];
    let mut interp = Interpreter::new(model, &mut arena).unwrap();
    interp.run(pixels).unwrap();
    let mut out = vec![0.0; model.num_classes()];
    interp.logits(&mut out).unwrap();
    out
}

#[test]
fn every_family_member_runs_on_the_engine() {
    let pixels: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 37 % 251) as u8).collect();
    let base = Architecture::by_name("resnet20").unwrap();
    let mut archs = vec![
        Architecture::by_name("resnet8").unwrap(),
        Architecture::by_name("plain20").unwrap(),
    ];
    for shortcut in [Shortcut::A, Shortcut::B, Shortcut::C] {
        for block in [Block::Basic, Block::Bottleneck] {
            archs.push(Architecture {
                shortcut,
                block,
                ..base.clone()
            });
        }
    }
    for arch in archs {
        let network = arch.network(42).unwrap();
        let full = logits(&network, Encoding::F32, &pixels);
        let half = logits(&network, Encoding::F16, &pixels);
        let range = full.iter().cloned().fold(f32::MIN, f32::max)
            - full.iter().cloned().fold(f32::MAX, f32::min);
        let err = full
            .iter()
            .zip(&half)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            err <= 2e-3 * range.max(1e-6),
            "{arch}: f16 differs by {err} of range {range}"
        );
        assert!(full.iter().all(|v| v.is_finite()), "{arch}");
    }
}
