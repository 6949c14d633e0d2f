//! `summary.html`: the Markdown summary's content with the SVG plots inline.

use std::fmt::Write as _;

use super::{
    super::format::format_value,
    record::StudyRecord,
    tables::{jobs_text, status_text, train_seconds_text, trainer_text},
};

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `summary.html`: the Markdown summary's content with the SVG plots inline.
pub fn summary_html(rec: &StudyRecord, svgs: &[(&str, &str, String)]) -> String {
    let dims = rec.dimensions();
    let mut s = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>segtune study {0}</title>\n<style>\
         body{{font-family:sans-serif;max-width:1250px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;\
         text-align:right}}td:nth-child(2),th{{text-align:left}}tr.best{{background:#fff3cd}}\
         figure{{margin:1.5em 0}}figure svg{{max-width:100%;height:auto}}code{{font-size:90%}}\
         </style></head><body>\n<h1>Study <code>{0}</code></h1>\n<table>\n",
        esc(&rec.study)
    );
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(
            s,
            "<tr><th>{k}</th><td style=\"text-align:left\">{v}</td></tr>"
        );
    };
    kv("searcher", esc(rec.searcher()));
    if let Some(d) = &rec.dataset_id {
        kv("dataset", format!("<code>{}</code>", esc(d)));
    }
    kv("status", esc(&status_text(rec)));
    kv("jobs", esc(&jobs_text(rec)));
    let best = rec.best();
    if let Some(b) = best {
        kv(
            "best",
            format!(
                "job #{} <code>{}</code>: mean Dice <b>{:.4}</b>",
                b.index,
                esc(&b.job_id),
                b.mean
            ),
        );
    }
    s.push_str("</table>\n");
    if let Some(b) = best {
        s.push_str("<h2>Best strategy</h2>\n<table><tr><th>dimension</th><th>value</th></tr>\n");
        for d in &dims {
            if let Some(v) = b.strategy.values.get(&d.name) {
                let _ = writeln!(
                    s,
                    "<tr><td style=\"text-align:left\">{}</td><td>{}</td></tr>",
                    esc(&d.name),
                    format_value(&d.name, *v)
                );
            }
        }
        s.push_str(
            "</table>\n<p>As a strategy file: <a href=\"best.toml\">best.toml</a> \
             (<code>segtune train --dataset &lt;id&gt; --strategy best.toml</code>).</p>\n",
        );
    }
    if let Some(f) = &rec.final_model {
        let bundle = esc(&rec.final_bundle());
        let _ = writeln!(
            s,
            "<h2>Final model</h2>\n<p>The best strategy trained as the model to keep \
             (<code>segtune study finalize</code>): job <code>{}</code>, validation mean Dice \
             <b>{:.4}</b> (by the evaluator; not held out if it was trained on every case), \
             trained in {:.0} s. Bundle: <code>{bundle}</code>; segment new scans with \
             <code>segtune predict --model {bundle} --input SCANS --output MASKS</code>.</p>",
            esc(&f.job_id),
            f.mean,
            f.train_seconds
        );
    }
    s.push_str("<h2>Plots</h2>\n");
    for (stem, title, svg) in svgs {
        let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
        let _ = writeln!(
            s,
            "<figure id=\"{stem}\">{body}<figcaption>{} (<a href=\"{stem}.svg\">SVG</a>, \
             <a href=\"{stem}.png\">PNG</a>)</figcaption></figure>",
            esc(title)
        );
    }
    s.push_str(
        "<h2>Jobs</h2>\n<p>Also as <a href=\"jobs.csv\">jobs.csv</a>. <i>train seconds</i>: \
         the trainer's time on the job; <i>seconds</i>: from issue to reward (queueing, \
         training and evaluation).</p>\n<table><tr>",
    );
    let mut header = vec!["#".to_string(), "job".into(), "Dice".into()];
    if rec.classes() > 1 {
        header.push("per class".into());
    }
    header.extend(dims.iter().map(|d| d.name.clone()));
    header.extend(["trainer".into(), "train seconds".into(), "seconds".into()]);
    for h in &header {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>\n");
    let best_id = best.map(|b| b.job_id.as_str());
    for r in &rec.rows {
        let class = if Some(r.job_id.as_str()) == best_id {
            " class=\"best\""
        } else {
            ""
        };
        let _ = write!(
            s,
            "<tr{class}><td>{}</td><td><code>{}</code></td><td>{:.4}</td>",
            r.index,
            esc(&r.job_id),
            r.mean
        );
        if rec.classes() > 1 {
            let pc: Vec<String> = r.per_class.iter().map(|d| format!("{d:.3}")).collect();
            let _ = write!(s, "<td>{}</td>", pc.join(" "));
        }
        for d in &dims {
            let v = r
                .strategy
                .values
                .get(&d.name)
                .map_or("-".into(), |v| format_value(&d.name, *v));
            let _ = write!(s, "<td>{v}</td>");
        }
        let t = r.seconds.map_or("-".into(), |t| format!("{t:.0}"));
        let _ = writeln!(
            s,
            "<td style=\"text-align:left\">{}</td><td>{}</td><td>{t}</td></tr>",
            esc(&trainer_text(r)),
            train_seconds_text(r)
        );
    }
    s.push_str("</table>\n");
    if !rec.failed_jobs.is_empty() {
        s.push_str("<h2>Failed jobs</h2>\n<table><tr><th>job</th><th>reason</th></tr>\n");
        for (job, reason) in &rec.failed_jobs {
            let _ = writeln!(
                s,
                "<tr><td><code>{}</code></td><td style=\"text-align:left\">{}</td></tr>",
                esc(job),
                esc(reason)
            );
        }
        s.push_str("</table>\n");
    }
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::{
        super::{plots::plot_svg, record::fixtures::*},
        *,
    };

    #[test]
    fn html_summary_inlines_the_plots_and_names_every_job() {
        let rec = record();
        let svgs: Vec<(&str, &str, String)> = ["rewards", "strategy", "best"]
            .iter()
            .map(|w| (*w, *w, plot_svg(&rec, w).unwrap()))
            .collect();
        let html = summary_html(&rec, &svgs);
        assert_eq!(html.matches("<svg").count(), 3);
        assert_eq!(html.matches("<tr").count(), 5 + 10 + 13 + 2);
        assert!(html.contains("class=\"best\""));
        assert!(html.contains("<th>trainer</th><th>train seconds</th><th>seconds</th>"));
        assert!(
            html.contains("<td style=\"text-align:left\">trainer-2</td><td>12.2</td><td>18</td>"),
            "{html}"
        );
    }
}
