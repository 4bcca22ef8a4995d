//! When the served certificate expires: the labels of its expiry gauge, and the warning an
//! operator gets at start, on every reload and once a day while it is close (DESIGN §12).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{error, warn};
use openssl::asn1::Asn1Time;
use openssl::error::ErrorStack;
use openssl::x509::X509Ref;

/// A certificate closer than this to its notAfter gets a warning.
pub const WARN_WITHIN_DAYS: i64 = 30;

/// The leaf certificate as the expiry gauge labels it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// `CN=localhost`, or every entry of the subject name, comma-separated.
    pub subject: String,
    /// The serial number in upper-case hex.
    pub serial: String,
    /// notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
}

impl Expiry {
    pub fn of(cert: &X509Ref) -> Result<Expiry, ErrorStack> {
        let diff = Asn1Time::from_unix(0)?.diff(cert.not_after())?;
        let not_after = i64::from(diff.days) * 86_400 + i64::from(diff.secs);
        let serial = cert.serial_number().to_bn()?.to_hex_str()?.to_string();
        Ok(Expiry { subject: subject(cert), serial, not_after })
    }
}

fn subject(cert: &X509Ref) -> String {
    let entries: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|entry| {
            let key = entry.object().nid().short_name().unwrap_or("?");
            let value = entry.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect();
    entries.join(",")
}

/// How close a certificate is to its end.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Expires within [`WARN_WITHIN_DAYS`]: whole days left.
    Soon(i64),
    Expired,
}

pub fn verdict(not_after: i64, now: i64) -> Verdict {
    let left = not_after - now;
    if left <= 0 {
        Verdict::Expired
    } else if left < WARN_WITHIN_DAYS * 86_400 {
        Verdict::Soon(left / 86_400)
    } else {
        Verdict::Fine
    }
}

/// Logs one warning (expiring soon) or one error (expired; it is still served, since an
/// operator may be replacing it) naming the file, the subject and the date.
pub fn check(file: &Path, expiry: &Expiry) {
    let date = date_of(expiry.not_after);
    let (file, subject) = (file.display(), &expiry.subject);
    match verdict(expiry.not_after, now()) {
        Verdict::Fine => {}
        Verdict::Soon(days) => warn!(
            "certificate {file} ({subject}) expires on {date}, in {days} days: replace it and reload (SIGHUP)"
        ),
        Verdict::Expired => error!(
            "certificate {file} ({subject}) expired on {date}; still serving it: replace it and reload (SIGHUP)"
        ),
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// `2027-01-31 12:00:00 UTC` from seconds since the Unix epoch.
pub fn date_of(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::asn1::Asn1Integer;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::{X509NameBuilder, X509};

    #[test]
    fn dates_are_calendar_dates_in_utc() {
        assert_eq!(date_of(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date_of(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(date_of(1_798_761_599), "2026-12-31 23:59:59 UTC");
    }

    #[test]
    fn verdicts_warn_within_thirty_days_and_flag_expired() {
        let day = 86_400;
        assert_eq!(verdict(1000 + 31 * day, 1000), Verdict::Fine);
        assert_eq!(verdict(1000 + 29 * day + 5, 1000), Verdict::Soon(29));
        assert_eq!(verdict(1000, 1000), Verdict::Expired);
    }

    #[test]
    fn reads_subject_serial_and_not_after_from_a_certificate() {
        let key = PKey::from_ec_key(
            EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
        )
        .unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("O", "tlsrelay").unwrap();
        name.append_entry_by_text("CN", "localhost").unwrap();
        let name = name.build();
        let mut cert = X509::builder().unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        let serial = Asn1Integer::from_bn(&BigNum::from_u32(0xABCD).unwrap()).unwrap();
        cert.set_serial_number(&serial).unwrap();
        cert.set_not_before(&Asn1Time::from_unix(1_700_000_000).unwrap()).unwrap();
        cert.set_not_after(&Asn1Time::from_unix(1_798_761_599).unwrap()).unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        let expiry = Expiry::of(&cert.build()).unwrap();
        assert_eq!(
            expiry,
            Expiry {
                subject: "O=tlsrelay,CN=localhost".into(),
                serial: "ABCD".into(),
                not_after: 1_798_761_599
            }
        );
    }
}
