//! PNG plots drawn directly into an image buffer with an 8×8 bitmap font: no font
//! files or system libraries, so they look the same on every machine.

use std::io::Cursor;

use anyhow::Result;
use image::{ImageFormat, Rgb, RgbImage};

use crate::train::EpochMetrics;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;
const LEFT: i32 = 70;
const RIGHT: i32 = 20;
const TOP: i32 = 40;
const BOTTOM: i32 = 60;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const BLACK: Rgb<u8> = Rgb([0, 0, 0]);
const GRID: Rgb<u8> = Rgb([225, 225, 225]);
/// One colour per run, cycled.
const PALETTE: [Rgb<u8>; 6] = [
    Rgb([214, 39, 40]),
    Rgb([31, 119, 180]),
    Rgb([44, 160, 44]),
    Rgb([255, 127, 14]),
    Rgb([148, 103, 189]),
    Rgb([23, 190, 207]),
];

/// Figure 6 of the paper for these runs: error (%) against epochs, training error
/// dashed, test error bold, one colour per run.
pub fn training_curves(runs: &[(&str, &[EpochMetrics])]) -> Result<Vec<u8>> {
    let mut canvas = Canvas::new();
    let epochs = runs
        .iter()
        .flat_map(|(_, m)| m.iter().map(|m| m.epoch))
        .max()
        .unwrap_or(1)
        .max(1);
    let worst = runs
        .iter()
        .flat_map(|(_, m)| m.iter().flat_map(|m| [m.train_error, m.test_error]))
        .fold(0.0f64, f64::max);
    let y_max = ((worst * 100.0 / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let area = Area {
        x_max: epochs as f64,
        y_max,
    };

    for i in 0..=5 {
        let value = y_max * f64::from(i) / 5.0;
        let (_, y) = area.point(0.0, value);
        canvas.line((LEFT, y), (WIDTH as i32 - RIGHT, y), GRID, 1, None);
        canvas.text_right(LEFT - 6, y - 4, &format!("{value:.0}"), BLACK);
    }
    let x_step = nice_step(epochs);
    let mut epoch = 0;
    while epoch <= epochs {
        let (x, _) = area.point(epoch as f64, 0.0);
        canvas.line((x, TOP), (x, HEIGHT as i32 - BOTTOM), GRID, 1, None);
        canvas.text_centered(x, HEIGHT as i32 - BOTTOM + 8, &epoch.to_string(), BLACK);
        epoch += x_step;
    }
    let (x0, y0) = area.point(0.0, 0.0);
    let (x1, y1) = area.point(area.x_max, area.y_max);
    canvas.line((x0, y0), (x1, y0), BLACK, 1, None);
    canvas.line((x0, y0), (x0, y1), BLACK, 1, None);
    canvas.text_centered((x0 + x1) / 2, HEIGHT as i32 - BOTTOM + 28, "epochs", BLACK);
    canvas.text(
        8,
        TOP - 24,
        "error (%)   dashed: training   bold: test",
        BLACK,
    );

    for (i, (name, metrics)) in runs.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points = |f: fn(&EpochMetrics) -> f64| -> Vec<(i32, i32)> {
            metrics
                .iter()
                .map(|m| area.point(m.epoch as f64, 100.0 * f(m)))
                .collect()
        };
        canvas.polyline(&points(|m| m.train_error), colour, 1, Some(6));
        canvas.polyline(&points(|m| m.test_error), colour, 3, None);
        let legend_y = TOP + 8 + 14 * i as i32;
        let legend_x = WIDTH as i32 - RIGHT - 200;
        canvas.line(
            (legend_x, legend_y + 4),
            (legend_x + 24, legend_y + 4),
            colour,
            3,
            None,
        );
        let last = metrics
            .last()
            .map(|m| format!(" {:.2}%", 100.0 * m.test_error))
            .unwrap_or_default();
        canvas.text(legend_x + 30, legend_y, &format!("{name}{last}"), BLACK);
    }
    canvas.png()
}

/// The confusion matrix as a heat map: rows are labels, columns predictions, each
/// cell shaded by its share of the row and labelled with its count.
pub fn confusion_matrix(
    confusion: &[Vec<u32>],
    class_names: &[String],
    title: &str,
) -> Result<Vec<u8>> {
    let n = confusion.len().max(1) as i32;
    let cell = (400 / n).clamp(24, 48);
    let (left, top) = (110, 60);
    let width = (left + n * cell + 20) as u32;
    let height = (top + n * cell + 40) as u32;
    let mut canvas = Canvas {
        image: RgbImage::from_pixel(width, height, WHITE),
    };
    canvas.text(8, 10, title, BLACK);
    canvas.text(left, top - 30, "predicted ->", BLACK);
    for (row, counts) in confusion.iter().enumerate() {
        let total: u32 = counts.iter().sum::<u32>().max(1);
        let name: String = class_names
            .get(row)
            .map_or(row.to_string(), |n| n.chars().take(12).collect());
        let y = top + row as i32 * cell;
        canvas.text_right(left - 6, y + cell / 2 - 4, &name, BLACK);
        canvas.text_centered(
            left + row as i32 * cell + cell / 2,
            top - 14,
            &row.to_string(),
            BLACK,
        );
        for (col, &count) in counts.iter().enumerate() {
            let share = f64::from(count) / f64::from(total);
            let shade = (255.0 * (1.0 - share)) as u8;
            let colour = if row == col {
                Rgb([shade, 255, shade])
            } else {
                Rgb([255, shade, shade])
            };
            let x = left + col as i32 * cell;
            for dy in 1..cell {
                for dx in 1..cell {
                    canvas.dot(x + dx, y + dy, colour, 1);
                }
            }
            if count > 0 {
                let ink = if share > 0.6 { WHITE } else { BLACK };
                canvas.text_centered(x + cell / 2, y + cell / 2 - 4, &count.to_string(), ink);
            }
        }
    }
    canvas.png()
}

/// A tick step giving at most about ten ticks.
fn nice_step(max: usize) -> usize {
    [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500]
        .into_iter()
        .find(|&step| max / step <= 10)
        .unwrap_or(max.div_ceil(10))
}

struct Area {
    x_max: f64,
    y_max: f64,
}

impl Area {
    fn point(&self, x: f64, y: f64) -> (i32, i32) {
        let width = f64::from(WIDTH as i32 - LEFT - RIGHT);
        let height = f64::from(HEIGHT as i32 - TOP - BOTTOM);
        (
            LEFT + (x / self.x_max * width).round() as i32,
            HEIGHT as i32 - BOTTOM - (y / self.y_max * height).round() as i32,
        )
    }
}

struct Canvas {
    image: RgbImage,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            image: RgbImage::from_pixel(WIDTH, HEIGHT, WHITE),
        }
    }

    fn dot(&mut self, x: i32, y: i32, colour: Rgb<u8>, thickness: i32) {
        let r = thickness / 2;
        let (width, height) = (self.image.width() as i32, self.image.height() as i32);
        for dy in -r..=(thickness - 1 - r) {
            for dx in -r..=(thickness - 1 - r) {
                let (px, py) = (x + dx, y + dy);
                if (0..width).contains(&px) && (0..height).contains(&py) {
                    self.image.put_pixel(px as u32, py as u32, colour);
                }
            }
        }
    }

    /// A straight line; `dash` gives the length of drawn and skipped runs.
    fn line(
        &mut self,
        (x0, y0): (i32, i32),
        (x1, y1): (i32, i32),
        colour: Rgb<u8>,
        thickness: i32,
        dash: Option<i32>,
    ) {
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
        for i in 0..=steps {
            if dash.is_some_and(|d| (i / d) % 2 == 1) {
                continue;
            }
            let x = x0 + (x1 - x0) * i / steps;
            let y = y0 + (y1 - y0) * i / steps;
            self.dot(x, y, colour, thickness);
        }
    }

    fn polyline(
        &mut self,
        points: &[(i32, i32)],
        colour: Rgb<u8>,
        thickness: i32,
        dash: Option<i32>,
    ) {
        if let [only] = points {
            self.dot(only.0, only.1, colour, thickness + 2);
        }
        for pair in points.windows(2) {
            self.line(pair[0], pair[1], colour, thickness, dash);
        }
    }

    fn text(&mut self, x: i32, y: i32, text: &str, colour: Rgb<u8>) {
        use font8x8::UnicodeFonts;
        for (i, ch) in text.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.dot(x + 8 * i as i32 + col, y + row as i32, colour, 1);
                    }
                }
            }
        }
    }

    fn text_right(&mut self, right: i32, y: i32, text: &str, colour: Rgb<u8>) {
        self.text(right - 8 * text.chars().count() as i32, y, text, colour);
    }

    fn text_centered(&mut self, centre: i32, y: i32, text: &str, colour: Rgb<u8>) {
        self.text(centre - 4 * text.chars().count() as i32, y, text, colour);
    }

    fn png(self) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?;
        Ok(bytes)
    }
}
