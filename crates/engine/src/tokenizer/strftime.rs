//! `strftime_now(format)` for chat templates (dates in system prompts).
//!
//! `transformers` formats the local time; servers mostly run on UTC, and we
//! format UTC, with the C library's common directives (`%-d` style
//! unpadded variants included). Unknown directives are written as they are.

use std::time::{SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime {
    pub year: i64,
    pub month: u32, // 1..=12
    pub day: u32,   // 1..=31
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub weekday: u32, // 0 = Monday
    pub yday: u32,    // 1..=366
}

impl DateTime {
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yday = CUM[month as usize - 1] + day + u32::from(leap && month > 2);
        Self {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            weekday: (days + 3).rem_euclid(7) as u32, // 1970-01-01 was a Thursday
            yday,
        }
    }

    pub fn now() -> Self {
        let secs = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        Self::from_unix(secs)
    }

    /// Formats with C `strftime` directives.
    pub fn format(&self, fmt: &str) -> String {
        let mut out = String::with_capacity(fmt.len() + 16);
        let mut chars = fmt.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let unpadded = chars.peek() == Some(&'-');
            if unpadded {
                chars.next();
            }
            let Some(d) = chars.next() else {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                break;
            };
            let num = |n: i64, width: usize| {
                if unpadded {
                    n.to_string()
                } else {
                    format!("{n:0width$}")
                }
            };
            let hour12 = match self.hour % 12 {
                0 => 12,
                h => h,
            };
            let s = match d {
                'Y' => self.year.to_string(),
                'y' => num(self.year.rem_euclid(100), 2),
                'C' => num(self.year.div_euclid(100), 2),
                'm' => num(self.month.into(), 2),
                'd' => num(self.day.into(), 2),
                'e' => {
                    if unpadded {
                        self.day.to_string()
                    } else {
                        format!("{:>2}", self.day)
                    }
                }
                'j' => num(self.yday.into(), 3),
                'H' => num(self.hour.into(), 2),
                'I' => num(hour12.into(), 2),
                'M' => num(self.minute.into(), 2),
                'S' => num(self.second.into(), 2),
                'p' => (if self.hour < 12 { "AM" } else { "PM" }).to_string(),
                'A' => DAYS[self.weekday as usize].to_string(),
                'a' => DAYS[self.weekday as usize][..3].to_string(),
                'B' => MONTHS[self.month as usize - 1].to_string(),
                'b' | 'h' => MONTHS[self.month as usize - 1][..3].to_string(),
                'u' => (self.weekday + 1).to_string(),
                'w' => ((self.weekday + 1) % 7).to_string(),
                'F' => format!("{}-{:02}-{:02}", self.year, self.month, self.day),
                'D' => format!(
                    "{:02}/{:02}/{:02}",
                    self.month,
                    self.day,
                    self.year.rem_euclid(100)
                ),
                'T' => format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second),
                'R' => format!("{:02}:{:02}", self.hour, self.minute),
                'c' => format!(
                    "{} {} {:>2} {:02}:{:02}:{:02} {}",
                    &DAYS[self.weekday as usize][..3],
                    &MONTHS[self.month as usize - 1][..3],
                    self.day,
                    self.hour,
                    self.minute,
                    self.second,
                    self.year
                ),
                'x' => format!(
                    "{:02}/{:02}/{:02}",
                    self.month,
                    self.day,
                    self.year.rem_euclid(100)
                ),
                'X' => format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second),
                'Z' => "UTC".to_string(),
                'z' => "+0000".to_string(),
                'n' => "\n".to_string(),
                't' => "\t".to_string(),
                '%' => "%".to_string(),
                other => {
                    let mut s = String::from('%');
                    if unpadded {
                        s.push('-');
                    }
                    s.push(other);
                    s
                }
            };
            out.push_str(&s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        let t = DateTime::from_unix(0);
        assert_eq!(
            (t.year, t.month, t.day, t.weekday, t.yday),
            (1970, 1, 1, 3, 1)
        );
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60.
        let t = DateTime::from_unix(1_709_211_909);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (2024, 2, 29, 13, 5, 9)
        );
        assert_eq!((t.weekday, t.yday), (3, 60));
        // 2023-12-31 is day 365 of a common year, a Sunday.
        let t = DateTime::from_unix(1_703_980_800);
        assert_eq!(
            (t.year, t.month, t.day, t.weekday, t.yday),
            (2023, 12, 31, 6, 365)
        );
        let t = DateTime::from_unix(-1);
        assert_eq!((t.year, t.month, t.day, t.hour), (1969, 12, 31, 23));
    }

    #[test]
    fn formats() {
        let t = DateTime::from_unix(1_709_211_909);
        assert_eq!(t.format("%d %b %Y"), "29 Feb 2024");
        assert_eq!(
            t.format("%A, %B %-d, %Y %I:%M %p"),
            "Thursday, February 29, 2024 01:05 PM"
        );
        assert_eq!(
            t.format("%F %T %j %% %Q %"),
            "2024-02-29 13:05:09 060 % %Q %"
        );
        assert_eq!(t.format("%-m/%-d/%y"), "2/29/24");
    }
}
