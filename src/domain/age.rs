//! An age such as `30d` or `5m`: how old history must be to be pruned, or
//! an event to be reconciled.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::InvalidInput;

/// A positive span of whole seconds, minutes, hours, days or weeks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Age(Duration);

impl Age {
    pub fn as_duration(self) -> Duration {
        self.0
    }

    /// The moment this long ago.
    pub fn before_now(self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() - chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl FromStr for Age {
    type Err = InvalidInput;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            InvalidInput::new(format!(
                "invalid age {raw:?}: use a number and a unit, e.g. 90s, 5m, 12h, 30d, 2w"
            ))
        };
        let raw = raw.trim();
        let split = raw
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let (number, unit) = raw.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let unit_secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(invalid()),
        };
        match number.checked_mul(unit_secs) {
            Some(secs) if secs > 0 && secs <= 100 * 365 * 86_400 => {
                Ok(Self(Duration::from_secs(secs)))
            }
            _ => Err(invalid()),
        }
    }
}

impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        match secs {
            s if s % 86_400 == 0 => write!(f, "{}d", s / 86_400),
            s if s % 3_600 == 0 => write!(f, "{}h", s / 3_600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_a_unit_and_print_back() {
        assert_eq!(
            "30d".parse::<Age>().unwrap().as_duration(),
            Duration::from_secs(2_592_000)
        );
        assert_eq!("5m".parse::<Age>().unwrap().to_string(), "5m");
        assert_eq!("2w".parse::<Age>().unwrap().to_string(), "14d");
        assert_eq!("90s".parse::<Age>().unwrap().to_string(), "90s");
        for bad in [
            "",
            "30",
            "d",
            "0d",
            "-1d",
            "1.5h",
            "3y",
            "99999999999999999d",
        ] {
            assert!(bad.parse::<Age>().is_err(), "{bad:?} was accepted");
        }
    }
}
