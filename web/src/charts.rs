//! Two small SVG charts for the dashboard, drawn by the page itself (a charting crate would cost
//! more WASM than the page): a [`Histogram`] of durations with one bar per series in each bin, and
//! a [`TimeSeries`] of durations over time with one line per series. Both have labelled axes, a
//! legend, and an `aria-label` that says what they show.

use leptos::prelude::*;

/// Colours for series, in order.
pub const PALETTE: [&str; 6] = [
    "#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#4b5563",
];

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 30.0;
const PLOT_WIDTH: f64 = WIDTH - LEFT - RIGHT;
const PLOT_HEIGHT: f64 = HEIGHT - TOP - BOTTOM;

/// One series: its name, colour and points (`x`, `y`); a histogram reads only the `y`s.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A step of 1, 2 or 5 × 10ⁿ that cuts `0..span` into about `parts` pieces.
pub fn nice_step(span: f64, parts: usize) -> f64 {
    if !(span.is_finite() && span > 0.0) {
        return 1.0;
    }
    let rough = span / parts.max(1) as f64;
    let magnitude = 10f64.powf(rough.log10().floor());
    let fraction = rough / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Counts of `values` in bins `[i·width, (i+1)·width)`, `bins` of them (the last takes the rest).
pub fn bin_counts(values: impl IntoIterator<Item = f64>, width: f64, bins: usize) -> Vec<usize> {
    let mut counts = vec![0; bins];
    if bins == 0 {
        return counts;
    }
    for value in values {
        let index = ((value.max(0.0) / width).floor() as usize).min(bins - 1);
        counts[index] += 1;
    }
    counts
}

/// Formats milliseconds for an axis.
fn format_ms(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.0} s", ms / 1000.0)
    } else if ms >= 1000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// A histogram of durations in milliseconds.
#[component]
pub fn Histogram(
    /// What the chart shows, for screen readers and the caption.
    title: String,
    series: Vec<Series>,
) -> impl IntoView {
    let values = || series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let max_value = values().fold(0.0_f64, f64::max);
    let min_value = values().fold(max_value, f64::min);
    // The bins cover the values' range (from a round number), not 0 to the maximum.
    let width = nice_step((max_value - min_value).max(1.0), 12);
    let low = (min_value / width).floor() * width;
    let bins = (((max_value - low) / width).floor() as usize + 1).max(1);
    let counts: Vec<Vec<usize>> = series
        .iter()
        .map(|s| bin_counts(s.points.iter().map(|p| p.1 - low), width, bins))
        .collect();
    let highest = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let count_step = nice_step(highest as f64, 4).max(1.0);
    let y_max = (highest as f64 / count_step).ceil() * count_step;
    let bin_width = PLOT_WIDTH / bins as f64;
    let bar_width = (bin_width - 2.0) / series.len().max(1) as f64;
    let y = move |count: f64| TOP + PLOT_HEIGHT - count / y_max * PLOT_HEIGHT;

    let bars = counts
        .iter()
        .zip(&series)
        .enumerate()
        .flat_map(|(index, (counts, series))| {
            counts.iter().enumerate().filter(|(_, c)| **c > 0).map(move |(bin, count)| {
                let x = LEFT + bin as f64 * bin_width + 1.0 + index as f64 * bar_width;
                let top = y(*count as f64);
                let label = format!(
                    "{}: {count} between {} and {}",
                    series.name,
                    format_ms(low + bin as f64 * width),
                    format_ms(low + (bin + 1) as f64 * width)
                );
                view! {
                    <rect class="bar" x=x y=top width=bar_width.max(1.0) height=TOP + PLOT_HEIGHT - top fill=series.color>
                        <title>{label}</title>
                    </rect>
                }
            })
        })
        .collect_view();
    let label_every = bins.div_ceil(8);
    let x_labels = (0..=bins)
        .step_by(label_every)
        .map(|bin| {
            let x = LEFT + bin as f64 * bin_width;
            let anchor = if bin == 0 { "start" } else if bin == bins { "end" } else { "middle" };
            view! { <text x=x y=HEIGHT - 10.0 text-anchor=anchor>{format_ms(low + bin as f64 * width)}</text> }
        })
        .collect_view();
    let y_ticks = y_axis(y_max, count_step, y, |count| format!("{count:.0}"));
    chart(title, series, view! { {y_ticks} {bars} {x_labels} })
}

/// Durations (`y`, milliseconds) over time (`x`, milliseconds since the epoch).
#[component]
pub fn TimeSeries(title: String, series: Vec<Series>) -> impl IntoView {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_min = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = points().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let (x_min, x_span) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max - x_min)
    } else {
        (x_min.min(0.0), 1.0)
    };
    let value_max = points().map(|p| p.1).fold(0.0_f64, f64::max).max(1.0);
    let value_step = nice_step(value_max, 4);
    let y_max = (value_max / value_step).ceil() * value_step;
    let x = move |at: f64| LEFT + (at - x_min) / x_span * PLOT_WIDTH;
    let y = move |value: f64| TOP + PLOT_HEIGHT - value / y_max * PLOT_HEIGHT;

    let lines = series
        .iter()
        .map(|series| {
            let path: Vec<String> = series
                .points
                .iter()
                .map(|(at, value)| format!("{:.1},{:.1}", x(*at), y(*value)))
                .collect();
            let dots = series
                .points
                .iter()
                .map(|(at, value)| {
                    let label = format!("{}: {}", series.name, format_ms(*value));
                    view! {
                        <circle class="point" cx=x(*at) cy=y(*value) r="2.5" fill=series.color>
                            <title>{label}</title>
                        </circle>
                    }
                })
                .collect_view();
            view! {
                <polyline points=path.join(" ") fill="none" stroke=series.color stroke-width="1.5" />
                {dots}
            }
        })
        .collect_view();
    let x_labels = [0.0, 0.5, 1.0]
        .into_iter()
        .filter(|_| x_min.is_finite())
        .map(|share| {
            let at = x_min + share * x_span;
            let clock = js_sys::Date::new(&at.into())
                .to_locale_time_string("en-GB")
                .as_string()
                .unwrap_or_default();
            let anchor = match share {
                0.0 => "start",
                1.0 => "end",
                _ => "middle",
            };
            view! { <text x=x(at) y=HEIGHT - 10.0 text-anchor=anchor>{clock}</text> }
        })
        .collect_view();
    let y_ticks = y_axis(y_max, value_step, y, format_ms);
    chart(title, series, view! { {y_ticks} {lines} {x_labels} })
}

/// A chart's frame: the SVG holding `plot`, labelled with `title`, and the caption with a legend.
fn chart(title: String, series: Vec<Series>, plot: impl IntoView) -> impl IntoView {
    view! {
        <figure class="chart">
            <svg viewBox=format!("0 0 {WIDTH} {HEIGHT}") role="img" aria-label=title.clone()>
                {plot}
            </svg>
            <figcaption>{title}" "<Legend series=series /></figcaption>
        </figure>
    }
}

/// Horizontal grid lines with their labels, from 0 to `max` every `step`.
fn y_axis(
    max: f64,
    step: f64,
    y: impl Fn(f64) -> f64,
    label: impl Fn(f64) -> String,
) -> impl IntoView {
    let ticks = (max / step).round() as usize;
    (0..=ticks)
        .map(|tick| {
            let value = tick as f64 * step;
            let at = y(value);
            view! {
                <line class="grid" x1=LEFT x2=WIDTH - RIGHT y1=at y2=at />
                <text x=LEFT - 6.0 y=at + 4.0 text-anchor="end">{label(value)}</text>
            }
        })
        .collect_view()
}

#[component]
fn Legend(series: Vec<Series>) -> impl IntoView {
    series
        .into_iter()
        .map(|s| {
            view! {
                <span class="legend-item">
                    <span class="swatch" style=format!("background:{}", s.color)></span>
                    {s.name}
                </span>
            }
        })
        .collect_view()
}

#[cfg(all(test, target_arch = "wasm32"))]
mod tests {
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(100.0, 10), 10.0);
        assert_eq!(nice_step(130.0, 10), 20.0);
        assert_eq!(nice_step(0.3, 4), 0.1);
        assert_eq!(nice_step(4000.0, 12), 500.0);
        assert_eq!(nice_step(0.0, 4), 1.0);
    }

    #[test]
    fn values_land_in_their_bins_and_overflow_in_the_last() {
        assert_eq!(
            bin_counts([0.0, 9.9, 10.0, 35.0, 99.0], 10.0, 4),
            vec![2, 1, 0, 2]
        );
    }
}
