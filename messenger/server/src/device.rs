//! Devices (register, list, revoke) and P2P rendezvous.

use std::net::SocketAddr;

use qpq_proto::v1::{self, device_server::Device, p2p_server::P2p};
use qrpc::{RequestContext, Status};

use crate::auth::caller;
use crate::state::{Api, now_ms};
use crate::store::{DeviceId, Store, StoreError};
use crate::validate;

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
        let device = DeviceId::new(me.user, request.device);
        match self
            .state
            .store
            .register_device(device.clone(), request.label, now_ms(), false)
            .await
        {
            Ok(()) => {
                self.state.unrevoke(&device);
                Ok(v1::RegisterDeviceResponse {})
            }
            Err(StoreError::AlreadyExists) => {
                Err(Status::already_exists("device already registered"))
            }
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
        let device = DeviceId::new(me.user, request.device);
        match self.state.store.revoke_device(device.clone()).await {
            Ok(()) => {
                self.state.revoke(&device);
                Ok(v1::RevokeDeviceResponse {})
            }
            Err(StoreError::NotFound) => Err(Status::not_found("no such device")),
            Err(e) => Err(e.into()),
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
        let expires_at_ms =
            now_ms().saturating_add(u64::from(request.ttl_ms).min(MAX_ENDPOINT_TTL_MS));
        self.state
            .store
            .publish_endpoint(me, request.addresses, expires_at_ms)
            .await?;
        Ok(v1::PublishEndpointResponse { expires_at_ms })
    }

    async fn resolve_endpoint(
        &self,
        _ctx: RequestContext,
        request: v1::ResolveEndpointRequest,
    ) -> Result<v1::ResolveEndpointResponse, Status> {
        let device = validate::device_ref(request.device.as_ref())?;
        let (addresses, expires_at_ms) = self
            .state
            .store
            .endpoint(device, now_ms())
            .await?
            .ok_or_else(|| Status::not_found("no published endpoint"))?;
        Ok(v1::ResolveEndpointResponse {
            addresses,
            expires_at_ms,
        })
    }
}
