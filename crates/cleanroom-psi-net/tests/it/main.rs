//! The transport: sessions over real TLS on 127.0.0.1, refusals (wrong pin, another version,
//! garbage, oversize frames), and a peer that vanishes or goes silent.

mod framing;
mod tls;

use cleanroom_psi::group::Kinds;
use cleanroom_psi::{InputBuilder, PreparedInput, ProtocolKind, Role, SessionConfig};
use cleanroom_psi_net::{Identity, PeerPin, TlsSetup};

pub fn input(protocol: ProtocolKind, role: Role, ids: std::ops::Range<u32>) -> PreparedInput {
    let kinds = Kinds::new(&["email"]).unwrap();
    let max = (protocol.values_holder() == Some(role)).then_some(100);
    let mut b = InputBuilder::new(kinds, protocol, role, max).unwrap();
    for i in ids {
        let id = format!("user{i}@example.com");
        b.push(&[Some(id.as_bytes())], Some(i64::from(i % 10)))
            .unwrap();
    }
    b.finish().unwrap()
}

pub fn config(protocol: ProtocolKind, role: Role) -> SessionConfig {
    let mut c = SessionConfig::new(protocol, role);
    c.batch = 64;
    c
}

/// Two identities and the fingerprints each pins.
pub fn identities() -> ((Identity, String), (Identity, String)) {
    let mk = || {
        let (c, k) = Identity::generate_pem().unwrap();
        let id = Identity::from_pem(c.as_bytes(), k.as_bytes()).unwrap();
        let fp = id.fingerprint();
        (id, fp)
    };
    (mk(), mk())
}

pub fn setup(id: Identity, peer_fp: &str) -> std::sync::Arc<TlsSetup> {
    std::sync::Arc::new(TlsSetup::new(id, PeerPin::parse(peer_fp).unwrap()).unwrap())
}
