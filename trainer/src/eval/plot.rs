//! The accuracy-against-ε plot of the evaluation (PNG, one panel per norm).
//!
//! Text is drawn with DejaVu Sans embedded in the binary, so the plot looks the same
//! on a machine without any system fonts.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::FontStyle;

use super::EvalError;

/// One curve: worst-case robust accuracy of a defence at each ε of one norm.
pub struct Curve {
    /// Defence name (legend).
    pub defence: String,
    /// `(ε, accuracy in [0, 1], Wilson low, Wilson high)`, ε = 0 being clean accuracy.
    pub points: Vec<(f32, f64, f64, f64)>,
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn register_font() {
    // Registering twice is harmless: the first registration wins.
    let _ =
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
}

/// Draws `panels` (title, curves) side by side into a PNG at `path`.
pub fn accuracy_vs_eps(path: &Path, panels: &[(String, Vec<Curve>)]) -> Result<(), EvalError> {
    register_font();
    let n = panels.len().max(1) as u32;
    let (w, h) = (520 * n, 420);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    let err =
        |e: &dyn std::fmt::Display| EvalError::Plot(format!("cannot draw {}: {e}", path.display()));
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let areas = root.split_evenly((1, n as usize));
        for ((title, curves), area) in panels.iter().zip(areas.iter()) {
            let max_eps = curves
                .iter()
                .flat_map(|c| c.points.iter().map(|p| p.0))
                .fold(0.0f32, f32::max)
                .max(1e-3);
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(0f32..max_eps * 1.05, 0f64..100f64)
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc("ε")
                .y_desc("worst-case accuracy (%)")
                .label_style(("sans-serif", 14))
                .draw()
                .map_err(|e| err(&e))?;
            for (k, c) in curves.iter().enumerate() {
                let colour = COLOURS[k % COLOURS.len()];
                let pts: Vec<(f32, f64)> = c.points.iter().map(|p| (p.0, 100.0 * p.1)).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(c.defence.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| err(&e))?;
                // 95 % Wilson interval as a vertical bar at each point.
                chart
                    .draw_series(c.points.iter().map(|p| {
                        PathElement::new(vec![(p.0, 100.0 * p.2), (p.0, 100.0 * p.3)], colour)
                    }))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .label_font(("sans-serif", 14))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    // Encode in memory and write atomically: a killed run never leaves half a PNG.
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| err(&e))?;
        wr.write_image_data(&rgb).map_err(|e| err(&e))?;
    }
    crate::train::write_atomic(path, &png_bytes).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })
}
