//! clap value parsers shared by several subcommands' flags.

use std::time::Duration;

/// A number of seconds, fractions allowed, as for `--exit-when-idle`,
/// `--idle-timeout`: zero or more and finite.
pub fn seconds(raw: &str) -> Result<Duration, String> {
    let secs: f64 = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{raw} is not a number of seconds >= 0"))
}

/// [`seconds`] that must be more than zero, as for `--watch` (a zero
/// interval would redraw in a busy loop) and `--latency-secs`.
pub fn positive_seconds(raw: &str) -> Result<Duration, String> {
    seconds(raw)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("{raw} is not a number of seconds > 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_take_fractions_and_refuse_negatives_and_nonsense() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("0"), Ok(Duration::ZERO));
        assert!(seconds("-1").is_err());
        assert!(seconds("inf").is_err());
        assert!(seconds("NaN").is_err());
        assert!(seconds("soon").is_err());
    }

    #[test]
    fn positive_seconds_refuse_zero() {
        assert_eq!(positive_seconds("2"), Ok(Duration::from_secs(2)));
        assert!(positive_seconds("0").is_err());
        assert!(positive_seconds("-0.1").is_err());
    }
}
