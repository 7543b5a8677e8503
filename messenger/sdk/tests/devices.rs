//! One user, several devices: linking, copies of what each sends, revocation.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use qpq_sdk::{ClientEvent, ConnectionState, SendState};

#[tokio::test]
async fn a_linked_device_joins_conversations_and_a_revoked_one_is_cut_off() {
    let server = Server::start().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let laptop = account(&server, dirs[0].path(), "alice", "laptop").await;
    let bob = account(&server, dirs[1].path(), "bob", "phone").await;
    let mut laptop_events = laptop.subscribe();
    let mut bob_events = bob.subscribe();
    let dm = laptop.create_dm("bob").await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;

    // Link a tablet: the laptop registers it, it logs in, the laptop adopts it.
    laptop
        .link_device("tablet", "Alice's tablet")
        .await
        .unwrap();
    let tablet = server.client(dirs[2].path());
    let mut tablet_events = tablet.subscribe();
    tablet.login("alice", "tablet", "pw").await.unwrap();
    let devices = laptop.devices().await.unwrap();
    assert_eq!(
        devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        vec!["laptop", "tablet"]
    );
    assert!(devices[0].this_device && devices[1].has_keys);
    assert_eq!(laptop.adopt_devices().await.unwrap(), 1);
    let joined = next(&mut tablet_events, |e| match e {
        ClientEvent::ConversationCreated(c) => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(joined.id, dm.id);
    assert_eq!(
        laptop.adopt_devices().await.unwrap(),
        0,
        "nothing left to adopt"
    );

    // Both of Alice's devices receive Bob's message. Bob's client, sealing to a device of
    // Alice it had not seen, reports that its safety number with Alice changed.
    bob.conversation(&dm.id)
        .unwrap()
        .send_text("hi both", None)
        .unwrap()
        .id();
    let changed = next(&mut bob_events, |e| match e {
        ClientEvent::SafetyNumberChanged { user, device } => Some((user, device)),
        _ => None,
    })
    .await;
    assert_eq!(changed, ("alice".to_string(), "tablet".to_string()));
    assert!(
        bob.security_warnings()
            .contains(&ClientEvent::SafetyNumberChanged {
                user: "alice".into(),
                device: "tablet".into(),
            })
    );
    assert_eq!(text(&mut laptop_events).await.1, "hi both");
    assert_eq!(text(&mut tablet_events).await.1, "hi both");

    // What the tablet sends reaches Bob, and the laptop shows it as Alice's own.
    tablet
        .conversation(&dm.id)
        .unwrap()
        .send_text("from the tablet", None)
        .unwrap()
        .id();
    assert_eq!(
        text(&mut bob_events).await,
        ("alice/tablet".to_string(), "from the tablet".to_string())
    );
    let own = next(&mut laptop_events, |e| match e {
        ClientEvent::MessageReceived(m) if m.outgoing => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (own.body.as_str(), own.sender.as_str(), own.state),
        ("from the tablet", "alice/tablet", SendState::Sent)
    );

    // Revoking the tablet ends its session and takes it out of the conversation.
    laptop.revoke_device("tablet").await.unwrap();
    next(&mut tablet_events, |e| match e {
        ClientEvent::ConnectionStateChanged(ConnectionState::SessionEnded { .. }) => Some(()),
        _ => None,
    })
    .await;
    let id = bob
        .conversation(&dm.id)
        .unwrap()
        .send_text("after the revocation", None)
        .unwrap()
        .id();
    sent(&mut bob_events, id).await;
    assert_eq!(text(&mut laptop_events).await.1, "after the revocation");
    assert!(
        tablet
            .conversation(&dm.id)
            .unwrap()
            .messages(100)
            .unwrap()
            .iter()
            .all(|m| m.body != "after the revocation")
    );
}
