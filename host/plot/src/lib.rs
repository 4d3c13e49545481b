//! The PNG plots of tinyres, drawn with `plotters` and an embedded font (DejaVu Sans
//! from the `dejavu` crate, rasterised by `ab_glyph`), so that nothing is needed from
//! the system and a plot looks the same on every machine:
//!
//! - [`training_curves`]: error against epochs, in the style of the paper's Figure 6;
//! - [`confusion_matrix`]: a heat map with class names and a colour scale;
//! - [`profile_chart`]: instructions per layer of one inference on a device.

use std::io::Cursor;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use image::{ImageFormat, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

/// The family every text of these plots uses; [`embedded_font`] registers it.
const FONT: &str = "sans-serif";

/// One colour per run (matplotlib's first six), cycled.
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];
const GRID: RGBColor = RGBColor(230, 230, 230);
/// The colour of a full cell of the confusion matrix (an empty one is white).
const HEAT: RGBColor = RGBColor(8, 69, 148);

/// Registers DejaVu Sans (regular and bold) under [`FONT`] once per process.
fn embedded_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| anyhow!("the embedded DejaVu Sans font does not load"))
}

/// Draws into a `width`×`height` RGB canvas with `draw`, then encodes it as PNG.
fn png(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<Vec<u8>> {
    embedded_font()?;
    let mut pixels = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        draw(&root)?;
        root.present().map_err(|e| anyhow!("drawing: {e}"))?;
    }
    let image = RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| anyhow!("the canvas is not {width}x{height} RGB"))?;
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// Black text of `size` pixels, vertically centred on its point and placed at it by
/// `h` (the point is its left edge, centre or right edge).
fn label(size: u32, h: HPos) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font())
        .color(&BLACK)
        .pos(Pos::new(h, VPos::Center))
}

/// A plotters error as an `anyhow` one (its errors borrow the backend, so `?` cannot
/// convert them).
fn drawing<T, E: std::fmt::Display>(result: std::result::Result<T, E>) -> Result<T> {
    result.map_err(|e| anyhow!("drawing: {e}"))
}

/// One training run's curves.
#[derive(Clone, Debug)]
pub struct Run {
    /// Shown in the legend (the architecture, usually).
    pub name: String,
    /// The run's epochs, in order.
    pub epochs: Vec<Epoch>,
}

/// The errors after one epoch, as fractions (0.25 is 25 %).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Epoch {
    /// 1-based epoch.
    pub epoch: usize,
    /// Training error during the epoch.
    pub train_error: f64,
    /// Test error after the epoch.
    pub test_error: f64,
}

/// Figure 6 of the paper for these runs: error (%) against epochs, the training error
/// dashed, the test error bold, one colour per run, the final errors in the legend.
pub fn training_curves(runs: &[Run]) -> Result<Vec<u8>> {
    let epochs = runs
        .iter()
        .flat_map(|r| r.epochs.iter().map(|e| e.epoch))
        .max()
        .unwrap_or(1)
        .max(1);
    let worst = runs
        .iter()
        .flat_map(|r| r.epochs.iter().flat_map(|e| [e.train_error, e.test_error]))
        .fold(0.0f64, f64::max);
    // The y axis ends at the next 10 % above the worst error.
    let y_max = ((worst * 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    png(960, 600, |root| {
        drawing(root.fill(&WHITE))?;
        let mut chart = drawing(
            ChartBuilder::on(root)
                .caption("training error (dashed) and test error (bold)", (FONT, 22))
                .margin(16)
                .x_label_area_size(48)
                .y_label_area_size(64)
                .build_cartesian_2d(0.0..epochs as f64, 0.0..y_max),
        )?;
        drawing(
            chart
                .configure_mesh()
                .x_desc("epochs")
                .y_desc("error (%)")
                .axis_desc_style((FONT, 18))
                .label_style((FONT, 15))
                .light_line_style(WHITE)
                .bold_line_style(GRID)
                .x_labels(epochs.min(12) + 1)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw(),
        )?;
        for (i, run) in runs.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let train: Vec<(f64, f64)> = run
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, 100.0 * e.train_error))
                .collect();
            let test: Vec<(f64, f64)> = run
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, 100.0 * e.test_error))
                .collect();
            drawing(chart.draw_series(DashedLineSeries::new(train, 8, 5, colour.stroke_width(2))))?;
            let last = run.epochs.last().map_or(String::new(), |e| {
                format!(
                    ": {:.1} % train, {:.1} % test",
                    100.0 * e.train_error,
                    100.0 * e.test_error
                )
            });
            drawing(chart.draw_series(LineSeries::new(test, colour.stroke_width(4))))?
                .label(format!("{}{last}", run.name))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(4))
                });
        }
        drawing(
            chart
                .configure_series_labels()
                .label_font((FONT, 16))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .position(SeriesLabelPosition::UpperRight)
                .draw(),
        )
    })
}

/// The confusion matrix as a heat map: rows are true labels, columns predictions, each
/// cell coloured by its share of the row (the scale on the right) and labelled with
/// its count; the diagonal is what was right.
pub fn confusion_matrix(
    confusion: &[Vec<u32>],
    class_names: &[String],
    title: &str,
) -> Result<Vec<u8>> {
    let n = confusion.len().max(1);
    let cell = (560 / n).clamp(28, 64) as i32;
    let name_of = |k: usize| -> String {
        class_names
            .get(k)
            .map_or(k.to_string(), |s| s.chars().take(14).collect())
    };
    // Room for the row names on the left, the rotated column names above.
    let (left, top) = (150, 160);
    let grid = cell * n as i32;
    let (scale_x, scale_w) = (left + grid + 30, 18);
    let width = (scale_x + scale_w + 60) as u32;
    let height = (top + grid + 30) as u32;
    png(width, height, |root| {
        drawing(root.fill(&WHITE))?;
        let top_left = |size: u32| TextStyle::from((FONT, size).into_font()).color(&BLACK);
        drawing(root.draw(&Text::new(title.to_string(), (16, 14), top_left(20))))?;
        drawing(root.draw(&Text::new(
            "predicted class",
            (left + grid / 2, 48),
            label(17, HPos::Center),
        )))?;
        for (row, counts) in confusion.iter().enumerate() {
            let total = counts.iter().sum::<u32>().max(1);
            let y = top + row as i32 * cell;
            drawing(root.draw(&Text::new(
                name_of(row),
                (left - 8, y + cell / 2),
                label(15, HPos::Right),
            )))?;
            for (col, &count) in counts.iter().enumerate() {
                let x = left + col as i32 * cell;
                let share = f64::from(count) / f64::from(total);
                drawing(root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    heat(share).filled(),
                )))?;
                if count > 0 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    drawing(root.draw(&Text::new(
                        count.to_string(),
                        (x + cell / 2, y + cell / 2),
                        label(13, HPos::Center).color(&ink),
                    )))?;
                }
            }
        }
        // Column names, rotated so that long names fit above narrow cells.
        for col in 0..n {
            let x = left + col as i32 * cell + cell / 2;
            drawing(root.draw(&Text::new(
                name_of(col),
                (x, top - 8),
                label(15, HPos::Left).transform(FontTransform::Rotate270),
            )))?;
        }
        drawing(root.draw(&Rectangle::new(
            [(left, top), (left + grid, top + grid)],
            BLACK.stroke_width(1),
        )))?;
        drawing(root.draw(&Text::new(
            "true class",
            (20, top + grid / 2),
            label(17, HPos::Center).transform(FontTransform::Rotate270),
        )))?;
        // The colour scale: share of the row, 0 % at the bottom, 100 % at the top.
        for step in 0..grid {
            let share = 1.0 - f64::from(step) / f64::from(grid);
            drawing(root.draw(&Rectangle::new(
                [(scale_x, top + step), (scale_x + scale_w, top + step + 1)],
                heat(share).filled(),
            )))?;
        }
        drawing(root.draw(&Rectangle::new(
            [(scale_x, top), (scale_x + scale_w, top + grid)],
            BLACK.stroke_width(1),
        )))?;
        for tick in 0..=4 {
            let y = top + grid - grid * tick / 4;
            drawing(root.draw(&Text::new(
                format!("{} %", tick * 25),
                (scale_x + scale_w + 6, y),
                label(13, HPos::Left),
            )))?;
        }
        drawing(root.draw(&Text::new("of row", (scale_x - 4, top - 14), top_left(13))))
    })
}

/// White to [`HEAT`] as `share` goes from 0 to 1.
fn heat(share: f64) -> RGBColor {
    let share = share.clamp(0.0, 1.0);
    let mix = |full: u8| (255.0 - (255.0 - f64::from(full)) * share).round() as u8;
    RGBColor(mix(HEAT.0), mix(HEAT.1), mix(HEAT.2))
}

/// One bar of [`profile_chart`]: a step of an inference.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileBar {
    /// The step: `input`, or the layer's index and op.
    pub label: String,
    /// Instructions the step took.
    pub instructions: u64,
    /// Multiply-accumulates per instruction (0 for steps without MACs).
    pub macs_per_instruction: f64,
}

/// Instructions per step of one inference as horizontal bars, the first step on
/// top, each labelled with its share of the whole and its MACs per instruction.
pub fn profile_chart(bars: &[ProfileBar], title: &str) -> Result<Vec<u8>> {
    let total: u64 = bars.iter().map(|b| b.instructions).sum::<u64>().max(1);
    let most = bars
        .iter()
        .map(|b| b.instructions)
        .max()
        .unwrap_or(1)
        .max(1);
    let x_max = most as f64 / 1e6 * 1.3;
    let n = bars.len().max(1);
    let height = (120 + 30 * n) as u32;
    // Room for the longest step name (a streamed group names all its layers), about 8
    // pixels a character at 14 points; the bars keep 730 pixels.
    let longest = bars
        .iter()
        .map(|b| b.label.chars().count())
        .max()
        .unwrap_or(0);
    let label_area = (8 * longest as u32 + 24).max(230);
    png(730 + label_area, height, |root| {
        drawing(root.fill(&WHITE))?;
        let mut chart = drawing(
            ChartBuilder::on(root)
                .caption(title, (FONT, 20))
                .margin(16)
                .x_label_area_size(44)
                .y_label_area_size(label_area)
                .build_cartesian_2d(0.0..x_max, 0.0..n as f64),
        )?;
        drawing(
            chart
                .configure_mesh()
                .disable_y_mesh()
                .light_line_style(WHITE)
                .bold_line_style(GRID)
                .x_desc("million instructions")
                .axis_desc_style((FONT, 16))
                .label_style((FONT, 14))
                .y_labels(0)
                .draw(),
        )?;
        // The steps' names, left of their bars (a numeric axis has no category labels).
        for (k, bar) in bars.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(0.0, (n - k - 1) as f64 + 0.5));
            drawing(root.draw(&Text::new(
                bar.label.clone(),
                (x - 8, y),
                label(14, HPos::Right),
            )))?;
        }
        let colour = PALETTE[0];
        drawing(chart.draw_series(bars.iter().enumerate().map(|(k, b)| {
            let y = (n - k - 1) as f64;
            Rectangle::new(
                [(0.0, y + 0.15), (b.instructions as f64 / 1e6, y + 0.85)],
                colour.filled(),
            )
        })))?;
        drawing(chart.draw_series(bars.iter().enumerate().map(|(k, b)| {
            let y = (n - k - 1) as f64 + 0.5;
            let share = 100.0 * b.instructions as f64 / total as f64;
            let note = if b.macs_per_instruction > 0.0 {
                format!("{share:.1} %, {:.2} MAC/instr", b.macs_per_instruction)
            } else {
                format!("{share:.1} %")
            };
            Text::new(
                note,
                (b.instructions as f64 / 1e6 + x_max * 0.01, y),
                label(13, HPos::Left),
            )
        })))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(png: &[u8]) -> RgbImage {
        image::load_from_memory(png).expect("a PNG").to_rgb8()
    }

    #[test]
    fn curves_draw_every_run_in_its_colour() {
        let run = |name: &str, scale: f64| Run {
            name: name.into(),
            epochs: (1..=5)
                .map(|epoch| Epoch {
                    epoch,
                    train_error: scale / epoch as f64,
                    test_error: scale * 1.2 / epoch as f64,
                })
                .collect(),
        };
        let image =
            decoded(&training_curves(&[run("plain20", 0.6), run("resnet20", 0.5)]).unwrap());
        assert_eq!(image.dimensions(), (960, 600));
        for colour in &PALETTE[..2] {
            let found = image
                .pixels()
                .any(|p| p.0 == [colour.0, colour.1, colour.2]);
            assert!(found, "no pixel of {colour:?}");
        }
    }

    #[test]
    fn confusion_matrix_colours_the_diagonal_fully() {
        let confusion = vec![vec![10, 0], vec![0, 10]];
        let names = vec!["cat".to_string(), "dog".to_string()];
        let image = decoded(&confusion_matrix(&confusion, &names, "test").unwrap());
        let full = image
            .pixels()
            .filter(|p| p.0 == [HEAT.0, HEAT.1, HEAT.2])
            .count();
        assert!(full > 2 * 28 * 28, "{full} pixels of the full colour");
    }

    #[test]
    fn profile_chart_has_one_bar_per_step() {
        let bars: Vec<ProfileBar> = (0..4)
            .map(|k| ProfileBar {
                label: format!("{k} conv"),
                instructions: 1_000_000 * (k + 1),
                macs_per_instruction: 0.5,
            })
            .collect();
        let image = decoded(&profile_chart(&bars, "profile").unwrap());
        assert_eq!(image.height(), 120 + 30 * 4);
    }
}
