//! QUIC transport presets.
//!
//! quinn's defaults suit bulk transfer on the open internet. RPC traffic is many small
//! request/response exchanges where the tail latency under loss decides the user experience:
//! quinn's probe timeout includes the peer's maximum ACK delay (25 ms by default), so a lost
//! packet at the end of a burst waits for it. [`TransportProfile::Rpc`], the default on both
//! sides, asks the peer (through the QUIC ACK-frequency extension, which quinn implements) to
//! acknowledge within 1 ms, so losses are detected and repaired in about a round trip.

use std::time::Duration;

/// A named set of QUIC transport settings, applied by both [`ServerConfig`](crate::ServerConfig)
/// and [`ClientConfig`](crate::ClientConfig).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportProfile {
    /// Tuned for RPC (the default): the peer is asked to acknowledge within
    /// [`RPC_MAX_ACK_DELAY`] (ACK-frequency extension), which shortens loss recovery for the
    /// last packets of a call; everything else is quinn's default.
    #[default]
    Rpc,
    /// quinn's defaults, unchanged (for comparison, or for peers that bulk-transfer).
    QuinnDefaults,
}

/// The ACK delay the [`TransportProfile::Rpc`] profile asks of the peer.
pub const RPC_MAX_ACK_DELAY: Duration = Duration::from_millis(1);

impl TransportProfile {
    /// Applies the profile to a quinn transport configuration.
    pub(crate) fn apply(self, transport: &mut quinn::TransportConfig) {
        match self {
            Self::Rpc => {
                let mut ack = quinn::AckFrequencyConfig::default();
                ack.max_ack_delay(Some(RPC_MAX_ACK_DELAY));
                transport.ack_frequency_config(Some(ack));
            }
            Self::QuinnDefaults => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What quinn holds after a profile is applied, read back from quinn's own type.
    fn applied(profile: TransportProfile) -> String {
        let mut t = quinn::TransportConfig::default();
        profile.apply(&mut t);
        format!("{t:?}")
    }

    #[test]
    fn the_rpc_profile_asks_for_prompt_acks_and_the_default_profile_leaves_quinn_alone() {
        let rpc = applied(TransportProfile::Rpc);
        assert!(
            rpc.contains("ack_frequency_config: Some(") && rpc.contains("max_ack_delay: Some(1ms)"),
            "{rpc}"
        );
        let plain = applied(TransportProfile::QuinnDefaults);
        assert!(plain.contains("ack_frequency_config: None"), "{plain}");
        assert_eq!(plain, format!("{:?}", quinn::TransportConfig::default()));
        assert_eq!(TransportProfile::default(), TransportProfile::Rpc);
    }

    #[test]
    fn both_sides_build_their_transport_from_the_profile() {
        // Read back from the quinn configurations the server and the client actually use.
        let server = format!("{:?}", crate::ServerConfig::default().transport());
        let client = format!("{:?}", crate::ClientConfig::default().transport());
        for side in [&server, &client] {
            assert!(side.contains("max_ack_delay: Some(1ms)"), "{side}");
        }
        // The server takes no datagrams (a zero-size advertisement); the client takes them
        // unless told otherwise.
        assert!(
            server.contains("datagram_receive_buffer_size: Some(0)"),
            "{server}"
        );
        assert!(
            !client.contains("datagram_receive_buffer_size: Some(0)"),
            "{client}"
        );
        let no_datagrams = crate::ClientConfig {
            datagrams: false,
            ..Default::default()
        };
        let refusing = format!("{:?}", no_datagrams.transport());
        assert!(
            refusing.contains("datagram_receive_buffer_size: None"),
            "{refusing}"
        );

        let plain = crate::ServerConfig {
            transport_profile: TransportProfile::QuinnDefaults,
            ..Default::default()
        };
        let plain = format!("{:?}", plain.transport());
        assert!(plain.contains("ack_frequency_config: None"), "{plain}");
    }
}
