//! Numbers as people read them: sizes, durations, rates.

/// `6.1 MB`, `512 kB`, `900 B`.
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.0} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// A wait in words: `under a second`, `about 12 s`, `about 3 min`.
pub fn wait(ms: u64) -> String {
    match ms {
        0..=999 => "under a second".into(),
        1_000..=89_999 => format!("about {} s", ms.div_ceil(1000)),
        _ => format!("about {} min", (ms + 30_000) / 60_000),
    }
}

/// A rate with one decimal below 100.
pub fn rate(per_s: f64) -> String {
    if !per_s.is_finite() {
        "–".into()
    } else if per_s < 100.0 {
        format!("{per_s:.1}")
    } else {
        format!("{per_s:.0}")
    }
}

/// A share as a percentage.
pub fn percent(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0}%", x * 100.0)
    } else {
        "–".into()
    }
}

/// The head and tail of a peer id, enough to tell peers apart.
pub fn short_peer(id: &str) -> String {
    if id.len() <= 14 {
        id.to_string()
    } else {
        format!("{}…{}", &id[..6], &id[id.len() - 6..])
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM UTC` (civil-from-days, no time-zone database).
pub fn unix_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(6_105_856), "6.1 MB");
        assert_eq!(bytes(512_000), "512 kB");
        assert_eq!(bytes(12), "12 B");
        assert_eq!(wait(400), "under a second");
        assert_eq!(wait(11_200), "about 12 s");
        assert_eq!(wait(185_000), "about 3 min");
        assert_eq!(rate(12.345), "12.3");
        assert_eq!(percent(0.8), "80%");
        assert_eq!(short_peer("12D3KooWAbCdEfGhIjKlMn"), "12D3Ko…IjKlMn");
    }

    #[test]
    fn unix_times_read_as_dates() {
        assert_eq!(unix_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(unix_time(1_795_000_000), "2026-11-18 11:06 UTC");
    }
}
