//! Peer links: no bytes from a stranger panic the handshake (either side) or establish a
//! link, and no frame body, authentic or not, panics the opener; authentic frames that
//! decode seal again to the same bytes.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use palisade_identity::{Incarnation, NodeId, NodeName};
use palisade_peer_link::LocalIdentity;
use palisade_peer_link::auth::GroupKey;
use palisade_peer_link::frame::{Opened, Opener, Sealer};
use palisade_peer_link::handshake::Handshake;
use ring::hmac;

fn local() -> LocalIdentity {
    LocalIdentity {
        node_id: NodeId::from_bytes([7; 16]),
        incarnation: Incarnation::from_bytes([9; 16]),
        name: NodeName::new("fuzz").expect("a valid name"),
    }
}

fuzz_target!(|data: &[u8]| {
    let auth = Arc::new(GroupKey::new(b"fuzz key"));
    // The accepting side, fed a stranger's bytes.
    let mut server = Handshake::server(auth.clone(), local(), [1; 16]);
    if let Ok(used) = server.receive(data) {
        assert!(used <= data.len());
    }
    assert!(!server.is_established(), "no key, no link");
    // The dialling side, fed an answer to its hello.
    let mut client = Handshake::client(auth, local(), [2; 16]);
    let _ = client.take_outgoing();
    let _ = client.receive(data);
    assert!(!client.is_established(), "no key, no link");

    // Frames after a handshake: the bytes as they come (forged), then made authentic.
    let key = || hmac::Key::new(hmac::HMAC_SHA256, b"direction");
    let _ = Opener::new(key()).open(data);
    let mut authentic = data.to_vec();
    let mut context = hmac::Context::with_key(&key());
    context.update(&0u64.to_be_bytes());
    context.update(data);
    authentic.extend_from_slice(&context.sign().as_ref()[..16]);
    if let Ok(Some((Opened::Message(message), used))) = Opener::new(key()).open(&authentic)
        && used == authentic.len()
    {
        let mut again = Vec::new();
        Sealer::new(key()).seal(&message, &mut again);
        assert_eq!(again, authentic);
    }
});
