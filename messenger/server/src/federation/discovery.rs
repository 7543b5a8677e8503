//! Where a peer server listens: a configured address, else DNS — the SRV record
//! `_qpq-fed._udp.<domain>` (lowest priority first, heavier weight first within one), else
//! the domain's A/AAAA records and the default port. Answers are cached for their TTL by the
//! resolver.

use std::collections::HashMap;
use std::net::SocketAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

/// SRV targets looked up at most.
const MAX_TARGETS: usize = 4;

/// Finds peer servers' addresses.
pub struct Discovery {
    resolver: TokioResolver,
    overrides: HashMap<String, SocketAddr>,
    default_port: u16,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("overrides", &self.overrides)
            .field("default_port", &self.default_port)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// A resolver asking `dns_server` (or the system's resolvers when `None`), with static
    /// `overrides` that win over DNS.
    pub fn new(
        dns_server: Option<SocketAddr>,
        overrides: HashMap<String, SocketAddr>,
        default_port: u16,
    ) -> Result<Self, String> {
        let resolver = match dns_server {
            Some(server) => {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut ns.connections {
                    connection.port = server.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                )
                .build()
                .map_err(|e| e.to_string())?
            }
            None => TokioResolver::builder_tokio()
                .and_then(|b| b.build())
                .map_err(|e| format!("the system's DNS configuration: {e}"))?,
        };
        Ok(Self {
            resolver,
            overrides,
            default_port,
        })
    }

    /// The addresses to try for `domain`, best first.
    pub async fn locate(&self, domain: &str) -> Result<Vec<SocketAddr>, String> {
        if let Some(addr) = self.overrides.get(domain) {
            return Ok(vec![*addr]);
        }
        let mut found = Vec::new();
        if let Ok(srv) = self
            .resolver
            .srv_lookup(format!("_qpq-fed._udp.{domain}."))
            .await
        {
            let mut targets: Vec<(u16, u16, u16, String)> = srv
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::SRV(s) => Some((s.priority, s.weight, s.port, s.target.to_ascii())),
                    _ => None,
                })
                .collect();
            targets.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            // A few targets are plenty; a long answer costs no more lookups.
            for (_, _, port, target) in targets.into_iter().take(MAX_TARGETS) {
                if let Ok(ips) = self.resolver.lookup_ip(target.as_str()).await {
                    found.extend(ips.iter().map(|ip| SocketAddr::new(ip, port)));
                }
            }
        }
        if found.is_empty() {
            let ips = self
                .resolver
                .lookup_ip(format!("{domain}."))
                .await
                .map_err(|e| format!("no SRV or address record for {domain}: {e}"))?;
            found.extend(ips.iter().map(|ip| SocketAddr::new(ip, self.default_port)));
        }
        if found.is_empty() {
            return Err(format!("no address for {domain}"));
        }
        Ok(found)
    }
}
