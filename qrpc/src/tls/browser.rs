//! Short-lived certificates that browsers accept by hash (feature `webtransport`).
//!
//! A page may open a WebTransport session to a server whose certificate no authority signed,
//! if it names the certificate's SHA-256 in `serverCertificateHashes`. Browsers accept that
//! only for an ECDSA P-256 certificate valid for at most 14 days, so the server rotates it:
//! every [`rotate_every`](BrowserCertificates::rotate_every) the announced next certificate
//! becomes the current one and a new next one is announced. A page that fetched the hashes
//! ([`BrowserCertificates::hashes`]) before a rotation still connects after it, as it holds
//! the next hash too.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::error::TlsError;
use super::keys::{crypto_provider, fingerprint, format_fingerprint};

/// The longest validity browsers accept for a certificate pinned by hash.
pub const MAX_BROWSER_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);

/// How long each certificate is valid: below the browsers' limit, with a day to spare.
const VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);

/// How far a certificate's start is set back, for clocks of browsers slightly behind.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The default rotation: each certificate is announced for 6 days, then served for 6.
const DEFAULT_ROTATION: Duration = Duration::from_secs(6 * 24 * 3600);

/// One certificate and its key, ready to serve.
struct Issued {
    key: Arc<CertifiedKey>,
    hash: [u8; 32],
    created: SystemTime,
    not_after: SystemTime,
}

impl Issued {
    fn generate(names: &[String], now: SystemTime) -> Result<Self, TlsError> {
        let failed = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let key_pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(failed)?;
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        let not_after = not_before + VALIDITY;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let cert = params.self_signed(&key_pair).map_err(failed)?;
        let der = CertificateDer::from(cert.der().to_vec());
        let hash = fingerprint(&der);
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let key = CertifiedKey::from_der(vec![der], key_der, &crypto_provider())?;
        Ok(Self {
            key: Arc::new(key),
            hash,
            created: now,
            not_after,
        })
    }
}

struct Rotation {
    current: Issued,
    next: Issued,
}

/// Self-signed ECDSA P-256 certificates for browsers, valid 13 days each and rotated before
/// they expire; native `qrpc/1` clients keep the server's own certificate. Cheap to clone
/// (clones share the rotation).
///
/// ```no_run
/// # fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let browser = qrpc::tls::BrowserCertificates::generate(&["127.0.0.1", "localhost"])?;
/// // Publish these where the page fetches them (both: the current one and the next).
/// let hashes: Vec<[u8; 32]> = browser.hashes();
/// let web = qrpc::webtransport::WebTransport::new("/qrpc").browser_certificates(browser);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BrowserCertificates {
    inner: Arc<Inner>,
}

struct Inner {
    names: Vec<String>,
    rotate_every: Duration,
    rotation: Mutex<Rotation>,
}

impl BrowserCertificates {
    /// Certificates for `names` (DNS names or IP addresses; a page connects to one of them),
    /// rotated every six days.
    pub fn generate(names: &[&str]) -> Result<Self, TlsError> {
        Self::with_rotation(names, DEFAULT_ROTATION)
    }

    /// Certificates rotated every `rotate_every`: the next certificate is announced that long
    /// before it is served, and served that long. At most six and a half days, so that a
    /// certificate outlives its announcement and its service (13 days of validity).
    pub fn with_rotation(names: &[&str], rotate_every: Duration) -> Result<Self, TlsError> {
        if rotate_every.is_zero() || rotate_every * 2 > VALIDITY {
            return Err(TlsError::Generate(format!(
                "rotation every {rotate_every:?} is outside (0, {:?}]",
                VALIDITY / 2
            )));
        }
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let now = SystemTime::now();
        let rotation = Rotation {
            current: Issued::generate(&names, now)?,
            next: Issued::generate(&names, now)?,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                names,
                rotate_every,
                rotation: Mutex::new(rotation),
            }),
        })
    }

    /// How often the served certificate changes.
    pub fn rotate_every(&self) -> Duration {
        self.inner.rotate_every
    }

    /// The SHA-256 hashes a page passes as `serverCertificateHashes`: the certificate served
    /// now, then the one announced next. Fetch them again at least every
    /// [`rotate_every`](Self::rotate_every).
    pub fn hashes(&self) -> Vec<[u8; 32]> {
        self.hashes_at(SystemTime::now())
    }

    /// The hash of the certificate served now.
    pub fn current_hash(&self) -> [u8; 32] {
        self.with_rotation_at(SystemTime::now(), |r| r.current.hash)
    }

    /// When the certificate served now expires.
    pub fn current_not_after(&self) -> SystemTime {
        self.with_rotation_at(SystemTime::now(), |r| r.current.not_after)
    }

    /// Serves the announced certificate from now on and announces a new one (an operator's
    /// early rotation; the timer rotates on its own).
    pub fn rotate_now(&self) -> Result<(), TlsError> {
        let now = SystemTime::now();
        let next = Issued::generate(&self.inner.names, now)?;
        let mut rotation = self.lock();
        rotation.current = std::mem::replace(&mut rotation.next, next);
        Ok(())
    }

    fn hashes_at(&self, now: SystemTime) -> Vec<[u8; 32]> {
        self.with_rotation_at(now, |r| vec![r.current.hash, r.next.hash])
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rotation> {
        // Every update replaces whole certificates: a panic elsewhere leaves it consistent.
        self.inner
            .rotation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the rotation, rotated first if the time has come. A certificate that could
    /// not be generated leaves the served one in place (it is still valid for days) and is
    /// tried again at the next handshake.
    fn with_rotation_at<R>(&self, now: SystemTime, f: impl FnOnce(&Rotation) -> R) -> R {
        let mut rotation = self.lock();
        let older_than = |issued: &Issued, periods: u32| {
            now.duration_since(issued.created)
                .is_ok_and(|age| age >= self.inner.rotate_every * periods)
        };
        // The next certificate is served once it has been announced for a whole period, and
        // for one period only: a server that slept through several catches up at once.
        while older_than(&rotation.next, 1) || older_than(&rotation.current, 2) {
            match Issued::generate(&self.inner.names, now) {
                Ok(fresh) => rotation.current = std::mem::replace(&mut rotation.next, fresh),
                Err(err) => {
                    tracing::warn!(%err, "browser certificate rotation failed; retrying later");
                    break;
                }
            }
        }
        f(&rotation)
    }

    fn current_key(&self) -> Arc<CertifiedKey> {
        self.with_rotation_at(SystemTime::now(), |r| Arc::clone(&r.current.key))
    }
}

impl fmt::Debug for BrowserCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rotation = self.lock();
        f.debug_struct("BrowserCertificates")
            .field("current", &format_fingerprint(&rotation.current.hash))
            .field("next", &format_fingerprint(&rotation.next.hash))
            .field("rotate_every", &self.inner.rotate_every)
            .finish()
    }
}

/// Serves the browser certificate to connections that will speak HTTP/3 (`h3`, what a
/// browser's WebTransport offers) and the server's own certificate to every other.
#[derive(Debug)]
pub(crate) struct AlpnCertResolver {
    pub(crate) default: Arc<CertifiedKey>,
    pub(crate) browser: BrowserCertificates,
    /// The server's protocols, most preferred first, as the handshake chooses among them.
    pub(crate) server_alpn: Vec<Vec<u8>>,
}

impl AlpnCertResolver {
    /// Whether a client offering `offered` negotiates `h3`: the server picks its most
    /// preferred protocol the client offers, so a client offering `qrpc/1` and `h3` gets
    /// `qrpc/1` (and the server's own certificate).
    fn negotiates_h3<'a>(&self, offered: impl Iterator<Item = &'a [u8]>) -> bool {
        let offered: Vec<&[u8]> = offered.collect();
        self.server_alpn
            .iter()
            .find(|ours| offered.contains(&ours.as_slice()))
            .is_some_and(|chosen| chosen == crate::protocol::H3_ALPN)
    }
}

impl ResolvesServerCert for AlpnCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let h3 = hello
            .alpn()
            .is_some_and(|offered| self.negotiates_h3(offered));
        Some(if h3 {
            self.browser.current_key()
        } else {
            Arc::clone(&self.default)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn the_announced_certificate_is_served_after_one_period() {
        let certs = BrowserCertificates::with_rotation(&["127.0.0.1"], 6 * DAY).unwrap();
        let start = SystemTime::now();
        let [current, next] = <[[u8; 32]; 2]>::try_from(certs.hashes_at(start)).unwrap();
        assert_ne!(current, next);
        // Within the period nothing changes.
        assert_eq!(certs.hashes_at(start + 5 * DAY), vec![current, next]);
        // Then the announced one is served, and a new one announced.
        let later = certs.hashes_at(start + 6 * DAY + Duration::from_secs(1));
        assert_eq!(later[0], next);
        assert!(!later.contains(&current));
        // A server that slept through several periods catches up at once.
        let much_later = certs.hashes_at(start + 40 * DAY);
        assert!(!much_later.contains(&next));
        let served = certs.with_rotation_at(start + 40 * DAY, |r| r.current.created);
        assert!(
            served >= start + 30 * DAY,
            "the served certificate is fresh"
        );
    }

    #[test]
    fn a_served_certificate_is_valid_until_it_is_replaced() {
        let certs = BrowserCertificates::with_rotation(&["localhost"], 6 * DAY).unwrap();
        let start = SystemTime::now();
        for step in 0..10u32 {
            let now = start + step * DAY * 2;
            let (created, not_after) =
                certs.with_rotation_at(now, |r| (r.current.created, r.current.not_after));
            // Served no longer than two periods after it was made, and valid past that.
            assert!(now.duration_since(created).unwrap() <= 12 * DAY);
            assert!(not_after > created + 12 * DAY);
            assert!(not_after.duration_since(created).unwrap() <= MAX_BROWSER_VALIDITY);
        }
    }

    #[test]
    fn rotation_periods_that_outlive_the_certificates_are_refused() {
        assert!(BrowserCertificates::with_rotation(&["localhost"], 7 * DAY).is_err());
        assert!(BrowserCertificates::with_rotation(&["localhost"], Duration::ZERO).is_err());
    }

    #[test]
    fn the_browser_certificate_goes_to_connections_that_negotiate_h3() {
        let browser = BrowserCertificates::generate(&["localhost"]).unwrap();
        let resolver = AlpnCertResolver {
            default: browser.current_key(),
            browser,
            server_alpn: vec![b"qrpc/1".to_vec(), b"h3".to_vec()],
        };
        let offer = |protocols: &'static [&'static [u8]]| protocols.iter().copied();
        assert!(resolver.negotiates_h3(offer(&[b"h3"])));
        assert!(!resolver.negotiates_h3(offer(&[b"qrpc/1"])));
        // Offering both negotiates the server's preference, qrpc/1.
        assert!(!resolver.negotiates_h3(offer(&[b"h3", b"qrpc/1"])));
        assert!(!resolver.negotiates_h3(offer(&[b"other"])));
    }

    #[test]
    fn rotate_now_serves_the_announced_certificate() {
        let certs = BrowserCertificates::generate(&["localhost"]).unwrap();
        let before = certs.hashes();
        certs.rotate_now().unwrap();
        assert_eq!(certs.current_hash(), before[1]);
        assert!(!format!("{certs:?}").contains("PRIVATE"));
    }
}
