//! Devices (register, list, revoke) and P2P rendezvous.

use std::net::SocketAddr;
use std::sync::Arc;

use qpq_proto::v1::{self, device_server::Device, p2p_server::P2p};
use qrpc::{RequestContext, Status};

use crate::api::Api;
use crate::api::validate;
use crate::session::{EndReason, caller};
use crate::store::{DeviceId, Store, StoreError};

/// Addresses one device may publish.
const MAX_ADDRESSES: usize = 8;
/// Longest endpoint lifetime.
const MAX_ENDPOINT_TTL_MS: u64 = 3_600_000;

impl<S: Store> Device for Api<S> {
    async fn register_device(
        &self,
        ctx: RequestContext,
        request: v1::RegisterDeviceRequest,
    ) -> Result<v1::RegisterDeviceResponse, Status> {
        let me = caller(&ctx)?;
        validate::device(&request.device)?;
        validate::max_len("label", request.label.len(), 64)?;
        self.check_write(&me)?;
        let device = DeviceId::new(me.user, request.device);
        let max = self.state.limits.max_devices_per_user;
        match self
            .state
            .store
            .register_device(device, request.label, self.state.now_ms(), false, max)
            .await
        {
            Ok(()) => Ok(v1::RegisterDeviceResponse {}),
            Err(StoreError::AlreadyExists) => {
                Err(Status::already_exists("device already registered"))
            }
            Err(StoreError::QuotaExceeded) => Err(Status::resource_exhausted(format!(
                "a user may have at most {max} devices; revoke one first"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_devices(
        &self,
        ctx: RequestContext,
        _request: v1::ListDevicesRequest,
    ) -> Result<v1::ListDevicesResponse, Status> {
        let me = caller(&ctx)?;
        let devices = self.state.store.list_devices(me.user).await?;
        Ok(v1::ListDevicesResponse {
            devices: devices
                .into_iter()
                .map(|d| v1::DeviceInfo {
                    device: d.device,
                    label: d.label,
                    created_at_ms: d.created_at_ms,
                    has_keys: d.has_keys,
                })
                .collect(),
        })
    }

    async fn revoke_device(
        &self,
        ctx: RequestContext,
        request: v1::RevokeDeviceRequest,
    ) -> Result<v1::RevokeDeviceResponse, Status> {
        let me = caller(&ctx)?;
        validate::device(&request.device)?;
        self.check_write(&me)?;
        let device = DeviceId::new(me.user, request.device);
        // The store write and the end of the device's sessions run as one task of their own:
        // a caller that goes away (its stream reset) in between cannot leave the revoked
        // device a live session.
        let state = Arc::clone(&self.state);
        let this_connection = ctx.peer().id();
        let done = tokio::spawn(async move {
            let revoked = state
                .store
                .revoke_device(device.clone(), state.now_ms())
                .await;
            if revoked.is_ok() {
                // Every connection of the device is closed now; a device revoking itself
                // keeps this connection (logged out) until it has read the answer.
                state
                    .end_device_sessions(&device, EndReason::Revoked, Some(this_connection))
                    .await;
            }
            revoked
        });
        match done.await {
            Ok(Ok(())) => Ok(v1::RevokeDeviceResponse {}),
            Ok(Err(StoreError::NotFound)) => Err(Status::not_found("no such device")),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Status::internal("the revocation task failed")),
        }
    }
}

impl<S: Store> P2p for Api<S> {
    async fn health(
        &self,
        _ctx: RequestContext,
        _request: v1::HealthRequest,
    ) -> Result<v1::HealthResponse, Status> {
        Ok(v1::HealthResponse {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    async fn publish_endpoint(
        &self,
        ctx: RequestContext,
        request: v1::PublishEndpointRequest,
    ) -> Result<v1::PublishEndpointResponse, Status> {
        let me = caller(&ctx)?;
        self.check_write(&me)?;
        if request.addresses.is_empty() || request.addresses.len() > MAX_ADDRESSES {
            return Err(Status::invalid_argument(format!(
                "addresses: 1 to {MAX_ADDRESSES} entries"
            )));
        }
        for a in &request.addresses {
            a.parse::<SocketAddr>()
                .map_err(|_| Status::invalid_argument("addresses[]: must be ip:port"))?;
        }
        if request.ttl_ms == 0 {
            return Err(Status::invalid_argument("ttl_ms: must be positive"));
        }
        let expires_at_ms = self
            .state
            .now_ms()
            .saturating_add(u64::from(request.ttl_ms).min(MAX_ENDPOINT_TTL_MS));
        self.state
            .store
            .publish_endpoint(me, request.addresses, expires_at_ms)
            .await?;
        Ok(v1::PublishEndpointResponse { expires_at_ms })
    }

    async fn resolve_endpoint(
        &self,
        ctx: RequestContext,
        request: v1::ResolveEndpointRequest,
    ) -> Result<v1::ResolveEndpointResponse, Status> {
        let me = caller(&ctx)?;
        let device = validate::device_ref(request.device.as_ref())?;
        // An address is personal data: only the publisher's own devices and people who share a
        // channel with it may see it. Others cannot tell "hidden" from "not published".
        if !self
            .state
            .store
            .share_channel(me.user, device.user.clone())
            .await?
        {
            return Err(Status::not_found("no published endpoint"));
        }
        let (addresses, expires_at_ms) = self
            .state
            .store
            .endpoint(device, self.state.now_ms())
            .await?
            .ok_or_else(|| Status::not_found("no published endpoint"))?;
        Ok(v1::ResolveEndpointResponse {
            addresses,
            expires_at_ms,
        })
    }
}
