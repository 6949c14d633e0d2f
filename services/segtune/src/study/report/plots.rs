//! The report's plots (PNG and SVG from the same drawing code): the reward per job, the
//! strategy over the study, the best strategy.

use std::{path::Path, sync::Once};

use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};
use protocol::{Dimension, Scale, strategy};

use super::{
    super::format::format_value,
    record::{StudyRecord, is_probability, routine_value},
};

/// Registers DejaVu Sans (embedded) as plotters' "sans-serif": the `ab_glyph` text path
/// never looks at system fonts, which Docker images and CI do not have.
fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            if plotters::style::register_font(FONT, style, bytes).is_err() {
                tracing::warn!("the embedded DejaVu Sans font did not load");
            }
        }
    });
}

const FONT: &str = "sans-serif";
const C_REWARD: RGBColor = RGBColor(31, 119, 180);
const C_BEST: RGBColor = RGBColor(255, 127, 14);
const C_MARK: RGBColor = RGBColor(214, 39, 40);
const C_GRID: RGBColor = RGBColor(232, 232, 232);
const C_ROUTINE: RGBColor = RGBColor(120, 120, 120);
const C_RANGE: RGBColor = RGBColor(236, 242, 250);
/// Tableau 10: one colour per dimension.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

type PlotResult = anyhow::Result<()>;

/// A plot drawable on any plotters backend.
trait Plot {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static;
}

/// Object-safe rendering of a [`Plot`] to PNG and SVG.
pub(super) trait PlotAny {
    fn png(&self, path: &Path) -> PlotResult;
    fn svg(&self) -> anyhow::Result<String>;
}

impl<P: Plot> PlotAny for P {
    fn png(&self, path: &Path) -> PlotResult {
        register_fonts();
        let root = BitMapBackend::new(path, self.size()).into_drawing_area();
        self.draw(&root)?;
        root.present()?;
        Ok(())
    }

    fn svg(&self) -> anyhow::Result<String> {
        register_fonts();
        let mut s = String::new();
        {
            let root = SVGBackend::with_string(&mut s, self.size()).into_drawing_area();
            self.draw(&root)?;
            root.present()?;
        }
        Ok(s)
    }
}

/// The report's plots in the order it shows them: file stem, title, plot. A confirmed study
/// also gets its last confirmation's plot.
pub(super) fn plots(rec: &StudyRecord) -> Vec<(&'static str, &'static str, Box<dyn PlotAny + '_>)> {
    let mut out: Vec<(&'static str, &'static str, Box<dyn PlotAny + '_>)> = vec![
        ("rewards", "Reward per job", Box::new(RewardsPlot(rec))),
        (
            "strategy",
            "Strategy over the study",
            Box::new(StrategyPlot(rec)),
        ),
        ("best", "Best strategy", Box::new(BestPlot(rec))),
    ];
    if let Some(c) = rec.confirmations.last() {
        out.push(("confirm", "Confirmation", Box::new(ConfirmPlot(c))));
    }
    out
}

/// A confirmation: one column per arm, one dot per seed, a thin line joining one seed's arms
/// (the pairs the differences are taken over), each arm's mean as a bar.
struct ConfirmPlot<'a>(&'a protocol::Confirmation);

impl Plot for ConfirmPlot<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let c = self.0;
        root.fill(&WHITE)?;
        let k = c.arms.len();
        let names: Vec<String> = c.arms.iter().map(|a| a.name.clone()).collect();
        let (lo, hi) = dice_range(
            c.arms.iter().flat_map(|a| a.dice.iter().flatten().copied()),
            0.2,
        );
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "Confirmation of {} — {} seeds; lines join one seed's arms",
                    c.study,
                    c.seeds.len()
                ),
                font(22),
            )
            .margin(18)
            .x_label_area_size(52)
            .y_label_area_size(72)
            .build_cartesian_2d(-0.5f64..k as f64 - 0.5, lo..hi)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(C_GRID)
            .x_labels(k.max(1))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                    names[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.2}"))
            .x_desc("arm (same seeds in every arm)")
            .y_desc("validation Dice")
            .label_style(font(15))
            .axis_desc_style(font(17))
            .draw()?;
        for (a, arm) in c.arms.iter().enumerate() {
            if arm.mean.is_finite() {
                let x = a as f64;
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x - 0.3, arm.mean), (x + 0.3, arm.mean)],
                    C_MARK.stroke_width(3),
                )))?;
                // Right of the bar, except for the last arm (its label would leave the plot).
                let (lx, anchor) = if a + 1 == k {
                    (x - 0.32, HPos::Right)
                } else {
                    (x + 0.32, HPos::Left)
                };
                chart.draw_series(std::iter::once(Text::new(
                    format!("mean {:.4}", arm.mean),
                    (lx, arm.mean),
                    font(14).pos(Pos::new(anchor, VPos::Center)),
                )))?;
            }
        }
        for s in 0..c.seeds.len() {
            let color = PALETTE[s % PALETTE.len()];
            // A small horizontal offset per seed, so equal Dice stay visible.
            let dx = (s as f64 - (c.seeds.len() as f64 - 1.0) / 2.0) * 0.04;
            let pts: Vec<(f64, f64)> = c
                .arms
                .iter()
                .enumerate()
                .filter_map(|(a, arm)| {
                    arm.dice
                        .get(s)
                        .copied()
                        .flatten()
                        .map(|d| (a as f64 + dx, d))
                })
                .collect();
            chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(1)))?;
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 5, color.filled())))?
                .label(format!("seed {}", s + 1))
                .legend(move |(x, y)| Circle::new((x + 12, y), 5, color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(C_GRID)
            .label_font(font(14))
            .draw()?;
        Ok(())
    }
}

/// Renders one of the report's plots as an SVG document (for tests and embedding).
pub fn plot_svg(rec: &StudyRecord, which: &str) -> anyhow::Result<String> {
    match plots(rec).into_iter().find(|(stem, ..)| *stem == which) {
        Some((_, _, plot)) => plot.svg(),
        None => anyhow::bail!("no plot named {which}"),
    }
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// A y range around the rewards: tight enough to show differences, never outside [0, 1],
/// with `headroom` (fraction of the span) above for a legend.
fn dice_range(values: impl Iterator<Item = f64>, headroom: f64) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(0.05);
    let lo = (lo - 0.1 * span).max(0.0);
    let hi = (hi + (0.1 + headroom) * span).min(1.0);
    (lo, hi.max(lo + 0.05))
}

/// A log axis a bit wider than the dimension's range, so that both ends get tick labels.
fn log_range(d: &Dimension) -> (f64, f64) {
    (d.min / 1.6, d.max * 1.6)
}

/// A log axis' tick: `1e-3` below 1 (learning rates, noise), `30` above (sharpening strength).
fn log_tick(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.0e}")
    }
}

/// Reward per job in issue order, the best-so-far line, the best job ringed; pruned jobs
/// (their last intermediate Dice) as crosses, outside the best-so-far line.
struct RewardsPlot<'a>(&'a StudyRecord);

impl Plot for RewardsPlot<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 560)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let rec = self.0;
        root.fill(&WHITE)?;
        let points: Vec<(u32, f64)> = rec
            .rows
            .iter()
            .filter(|r| r.mean.is_finite() && r.pruned_at.is_none())
            .map(|r| (r.index, r.mean))
            .collect();
        let pruned: Vec<(u32, f64)> = rec
            .rows
            .iter()
            .filter(|r| r.mean.is_finite() && r.pruned_at.is_some())
            .map(|r| (r.index, r.mean))
            .collect();
        let n = rec.max_index();
        let (lo, hi) = dice_range(points.iter().chain(&pruned).map(|p| p.1), 0.35);
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Reward per job — {}", rec.label()), font(24))
            .margin(18)
            .x_label_area_size(52)
            .y_label_area_size(72)
            .build_cartesian_2d(0u32..n + 1, lo..hi)?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(C_GRID)
            .x_labels((n as usize + 1).min(25))
            .x_label_formatter(&|x| {
                if *x == 0 || *x > n {
                    String::new()
                } else {
                    x.to_string()
                }
            })
            .y_label_formatter(&|y| format!("{y:.2}"))
            .x_desc("job (issue order)")
            .y_desc("validation Dice (reward)")
            .label_style(font(15))
            .axis_desc_style(font(17))
            .draw()?;
        let mut steps = Vec::new();
        let mut best = f64::NEG_INFINITY;
        for &(x, y) in &points {
            if y > best {
                if best.is_finite() {
                    steps.push((x, best));
                }
                best = y;
                steps.push((x, best));
            }
        }
        if let Some(&(x, b)) = steps.last()
            && x < n
        {
            steps.push((n, b));
        }
        chart
            .draw_series(LineSeries::new(steps, C_BEST.stroke_width(3)))?
            .label("best so far")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], C_BEST.stroke_width(3)));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 5, C_REWARD.filled())),
            )?
            .label("reward of a job (mean validation Dice)")
            .legend(|(x, y)| Circle::new((x + 12, y), 5, C_REWARD.filled()));
        if !pruned.is_empty() {
            chart
                .draw_series(
                    pruned
                        .iter()
                        .map(|&(x, y)| Cross::new((x, y), 6, C_ROUTINE.stroke_width(2))),
                )?
                .label("pruned job (its last intermediate Dice)")
                .legend(|(x, y)| Cross::new((x + 12, y), 6, C_ROUTINE.stroke_width(2)));
        }
        if let Some(b) = rec.best() {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (b.index, b.mean),
                    10,
                    C_MARK.stroke_width(2),
                )))?
                .label(format!("best: job #{} ({:.4})", b.index, b.mean))
                .legend(|(x, y)| Circle::new((x + 12, y), 7, C_MARK.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(C_ROUTINE)
            .label_font(font(15))
            .draw()?;
        Ok(())
    }
}

/// Each dimension's value over the study: one small panel per dimension, jobs on x,
/// probabilities on [0, 1], log dimensions (the learning rate) on a log axis.
struct StrategyPlot<'a>(&'a StudyRecord);

impl StrategyPlot<'_> {
    fn grid(&self) -> (usize, usize) {
        let k = self.0.dimensions().len().max(1);
        let cols = k.min(3);
        (k.div_ceil(cols), cols)
    }
}

impl Plot for StrategyPlot<'_> {
    fn size(&self) -> (u32, u32) {
        let (rows, _) = self.grid();
        (1200, 70 + 250 * rows as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let rec = self.0;
        root.fill(&WHITE)?;
        let dims = rec.dimensions();
        let (rows, cols) = self.grid();
        let title = format!(
            "Strategy over the study — {}; ring: best job, dashed: routine strategy",
            rec.label()
        );
        let area = root.titled(&title, font(22))?;
        let n = rec.max_index();
        let best = rec.best();
        let panels = area.split_evenly((rows, cols));
        for (i, (d, panel)) in dims.iter().zip(panels.iter()).enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let series: Vec<(u32, f64)> = rec
                .rows
                .iter()
                .filter_map(|r| r.strategy.values.get(&d.name).map(|v| (r.index, *v)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            let best_point =
                best.and_then(|b| b.strategy.values.get(&d.name).map(|v| (b.index, *v)));
            let bottom_row = i / cols == rows - 1 || i + cols >= dims.len();
            let x_desc = if bottom_row { "job (issue order)" } else { "" };
            let x_fmt = |x: &u32| {
                if *x == 0 || *x > n {
                    String::new()
                } else {
                    x.to_string()
                }
            };
            let mut builder = ChartBuilder::on(panel);
            builder
                .caption(d.name.as_str(), font(17))
                .margin(10)
                .x_label_area_size(if bottom_row { 42 } else { 26 })
                .y_label_area_size(62);
            let routine = routine_value(d);
            // The two axis kinds have different coordinate types, hence the macro.
            macro_rules! panel_body {
                ($chart:ident, $yfmt:expr) => {{
                    $chart
                        .configure_mesh()
                        .light_line_style(TRANSPARENT)
                        .bold_line_style(C_GRID)
                        .x_labels((n as usize + 1).min(13))
                        .x_label_formatter(&x_fmt)
                        .y_labels(6)
                        .y_label_formatter(&$yfmt)
                        .x_desc(x_desc)
                        .label_style(font(13))
                        .axis_desc_style(font(14))
                        .draw()?;
                    if let Some(r) = routine {
                        $chart.draw_series(DashedLineSeries::new(
                            vec![(0, r), (n + 1, r)],
                            6,
                            4,
                            C_ROUTINE.stroke_width(1),
                        ))?;
                    }
                    $chart.draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?;
                    $chart.draw_series(
                        series
                            .iter()
                            .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                    )?;
                    if let Some(p) = best_point {
                        $chart.draw_series(std::iter::once(Circle::new(
                            p,
                            7,
                            C_MARK.stroke_width(2),
                        )))?;
                    }
                }};
            }
            if d.scale == Scale::Log && d.min > 0.0 {
                let (lo, hi) = log_range(d);
                let mut chart = builder.build_cartesian_2d(0u32..n + 1, (lo..hi).log_scale())?;
                panel_body!(chart, |y: &f64| log_tick(*y));
            } else {
                let (lo, hi) = if d.max > d.min {
                    (d.min, d.max)
                } else {
                    (d.min - 0.5, d.min + 0.5)
                };
                let mut chart = builder.build_cartesian_2d(0u32..n + 1, lo..hi)?;
                panel_body!(chart, |y: &f64| format!("{y:.1}"));
            }
        }
        Ok(())
    }
}

/// The best strategy: a horizontal bar per probability (dashed line: the routine 0.5), and
/// each other dimension (the learning rate, on a log axis) as a marker on its range.
struct BestPlot<'a>(&'a StudyRecord);

impl BestPlot<'_> {
    fn split(&self) -> (Vec<Dimension>, Vec<Dimension>) {
        self.0.dimensions().into_iter().partition(is_probability)
    }
}

const BAR_ROW: u32 = 44;
const OTHER_PANEL: u32 = 130;

impl Plot for BestPlot<'_> {
    fn size(&self) -> (u32, u32) {
        let (probs, others) = self.split();
        (
            1000,
            60 + 90 + BAR_ROW * probs.len() as u32 + OTHER_PANEL * others.len() as u32,
        )
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let rec = self.0;
        root.fill(&WHITE)?;
        let Some(best) = rec.best() else {
            return Ok(());
        };
        let (probs, others) = self.split();
        let title = format!(
            "Best strategy — study {}: job #{}, mean Dice {:.4}",
            rec.study, best.index, best.mean
        );
        let area = root.titled(&title, font(22))?;
        let bars_height = 90 + BAR_ROW * probs.len() as u32;
        let (bars, rest) = area.split_vertically(if others.is_empty() {
            area.dim_in_pixel().1
        } else {
            bars_height
        });
        const LABEL_AREA: u32 = 150;
        if !probs.is_empty() {
            let k = probs.len() as i32;
            let mut chart = ChartBuilder::on(&bars)
                .margin(14)
                .margin_right(40)
                .x_label_area_size(48)
                .y_label_area_size(LABEL_AREA)
                .build_cartesian_2d(0f64..1.08f64, (0..k - 1).into_segmented())?;
            // Segment i (counted from the bottom) shows dimension k-1-i: the study's order
            // reads top to bottom.
            let names: Vec<String> = probs.iter().map(|d| d.name.clone()).collect();
            chart
                .configure_mesh()
                .disable_y_mesh()
                .light_line_style(TRANSPARENT)
                .bold_line_style(C_GRID)
                .x_labels(11)
                .x_label_formatter(&|x| {
                    if *x > 1.0 + 1e-9 {
                        String::new()
                    } else {
                        format!("{x:.1}")
                    }
                })
                .y_labels(k as usize)
                .y_label_formatter(&|v| match v {
                    SegmentValue::CenterOf(i) if *i >= 0 && *i < k => {
                        names[(k - 1 - *i) as usize].clone()
                    }
                    _ => String::new(),
                })
                .x_desc("probability of applying the augmentation (dashed: routine strategy, 0.5)")
                .label_style(font(15))
                .axis_desc_style(font(16))
                .draw()?;
            // Under the bars: the line shows only where a probability is below routine.
            chart.draw_series(DashedLineSeries::new(
                vec![
                    (strategy::ROUTINE_PROBABILITY, SegmentValue::Exact(0)),
                    (strategy::ROUTINE_PROBABILITY, SegmentValue::Last),
                ],
                8,
                5,
                C_ROUTINE.stroke_width(2),
            ))?;
            for (j, d) in probs.iter().enumerate() {
                let i = k - 1 - j as i32;
                let v = best
                    .strategy
                    .values
                    .get(&d.name)
                    .copied()
                    .unwrap_or(f64::NAN);
                if !v.is_finite() {
                    continue;
                }
                let color = PALETTE[j % PALETTE.len()];
                let top = if i + 1 == k {
                    SegmentValue::Last
                } else {
                    SegmentValue::Exact(i + 1)
                };
                let mut bar = Rectangle::new(
                    [(0.0, SegmentValue::Exact(i)), (v, top.clone())],
                    color.mix(0.85).filled(),
                );
                bar.set_margin(7, 7, 0, 0);
                chart.draw_series(std::iter::once(bar))?;
                // The value on a white ground, so a label next to the routine line (a value
                // just under 0.5) stays readable.
                let mut ground = Rectangle::new(
                    [(v + 0.004, SegmentValue::Exact(i)), (v + 0.058, top)],
                    WHITE.filled(),
                );
                ground.set_margin(12, 12, 0, 0);
                chart.draw_series(std::iter::once(ground))?;
                chart.draw_series(std::iter::once(Text::new(
                    format!("{v:.3}"),
                    (v + 0.008, SegmentValue::CenterOf(i)),
                    font(15).pos(Pos::new(HPos::Left, VPos::Center)),
                )))?;
            }
        }
        let panels = if others.is_empty() {
            Vec::new()
        } else {
            rest.split_evenly((others.len(), 1))
        };
        for (d, panel) in others.iter().zip(panels.iter()) {
            let Some(&v) = best.strategy.values.get(&d.name) else {
                continue;
            };
            let log = d.scale == Scale::Log && d.min > 0.0;
            let desc = if log {
                format!("{} (log scale; shaded: the searched range)", d.name)
            } else {
                format!("{} (shaded: the searched range)", d.name)
            };
            let routine = routine_value(d);
            // Where the marker sits along the axis decides which way its label extends, so
            // that the label stays inside the panel.
            let (lo, hi) = if log {
                log_range(d)
            } else if d.max > d.min {
                (d.min, d.max)
            } else {
                (d.min - 0.5, d.min + 0.5)
            };
            let at = if log {
                (v.ln() - lo.ln()) / (hi.ln() - lo.ln())
            } else {
                (v - lo) / (hi - lo)
            };
            let anchor = if at > 0.7 {
                HPos::Right
            } else if at < 0.3 {
                HPos::Left
            } else {
                HPos::Center
            };
            macro_rules! marker_body {
                ($chart:ident, $xfmt:expr) => {{
                    $chart
                        .configure_mesh()
                        .disable_y_mesh()
                        .disable_y_axis()
                        .light_line_style(TRANSPARENT)
                        .bold_line_style(C_GRID)
                        .x_label_formatter(&$xfmt)
                        .x_desc(desc.as_str())
                        .label_style(font(15))
                        .axis_desc_style(font(16))
                        .draw()?;
                    $chart.draw_series(std::iter::once(Rectangle::new(
                        [(d.min, 0.0), (d.max, 1.0)],
                        C_RANGE.filled(),
                    )))?;
                    if let Some(r) = routine {
                        $chart.draw_series(DashedLineSeries::new(
                            vec![(r, 0.0), (r, 1.0)],
                            8,
                            5,
                            C_ROUTINE.stroke_width(2),
                        ))?;
                        $chart.draw_series(std::iter::once(Text::new(
                            format!(" routine {}", format_value(&d.name, r)),
                            (r, 0.2),
                            font(14).pos(Pos::new(HPos::Left, VPos::Center)),
                        )))?;
                    }
                    $chart.draw_series(LineSeries::new(
                        vec![(v, 0.0), (v, 0.7)],
                        C_MARK.stroke_width(3),
                    ))?;
                    $chart.draw_series(std::iter::once(TriangleMarker::new(
                        (v, 0.7),
                        9,
                        C_MARK.filled(),
                    )))?;
                    $chart.draw_series(std::iter::once(Text::new(
                        format!("best {} = {}", d.name, format_value(&d.name, v)),
                        (v, 0.88),
                        font(15).pos(Pos::new(anchor, VPos::Center)),
                    )))?;
                }};
            }
            let mut builder = ChartBuilder::on(panel);
            builder
                .margin(14)
                .margin_right(40)
                .x_label_area_size(48)
                .y_label_area_size(LABEL_AREA);
            if log {
                let mut chart = builder.build_cartesian_2d((lo..hi).log_scale(), 0f64..1f64)?;
                marker_body!(chart, |x: &f64| log_tick(*x));
            } else {
                let mut chart = builder.build_cartesian_2d(lo..hi, 0f64..1f64)?;
                marker_body!(chart, |x: &f64| format!("{x:.2}"));
            }
        }
        Ok(())
    }
}
