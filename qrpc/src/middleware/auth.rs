//! Authentication: a per-method public/protected policy and an [`Authenticator`] that decides
//! whether a protected call may proceed.

use std::collections::HashSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::TryFutureExt;
use futures::future::{Either, Ready};
use tower::{BoxError, Layer, Service};

use crate::body::ServerRequest;
use crate::context::RequestContext;
use crate::status::Status;

/// Decides whether a call to a protected method may proceed.
///
/// The connection is the session: an authenticator usually checks state a login handler bound
/// to the connection (see [`RequireIdentity`]), not per-request credentials.
pub trait Authenticator: Send + Sync + 'static {
    /// `Ok` lets the call through; an error (normally `Unauthenticated` or `PermissionDenied`)
    /// ends it before the handler runs.
    fn authenticate(&self, ctx: &RequestContext) -> Result<(), Status>;
}

impl<F> Authenticator for F
where
    F: Fn(&RequestContext) -> Result<(), Status> + Send + Sync + 'static,
{
    fn authenticate(&self, ctx: &RequestContext) -> Result<(), Status> {
        self(ctx)
    }
}

/// Lets a call through when the connection has a bound identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireIdentity;

impl Authenticator for RequireIdentity {
    fn authenticate(&self, ctx: &RequestContext) -> Result<(), Status> {
        match ctx.identity() {
            Some(_) => Ok(()),
            None => Err(Status::unauthenticated("log in first")),
        }
    }
}

use crate::method::MethodRef;

/// Which methods are public. Every method not listed is protected: a method added later is
/// protected until someone decides otherwise.
#[derive(Debug, Clone, Default)]
pub struct AuthPolicy {
    public: HashSet<u16>,
}

impl AuthPolicy {
    /// A policy where every method is protected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks a method public: a generated `MethodInfo` constant (`echo_server::SAY`) or a raw id.
    pub fn public(mut self, method: impl MethodRef) -> Self {
        self.public.insert(method.method_id());
        self
    }

    /// Marks every method in `methods` public.
    pub fn public_methods<M: MethodRef>(mut self, methods: impl IntoIterator<Item = M>) -> Self {
        self.public
            .extend(methods.into_iter().map(|m| m.method_id()));
        self
    }

    /// Marks every method of a service public (its generated `DESCRIPTOR`).
    pub fn public_service(self, service: &crate::ServiceDescriptor) -> Self {
        self.public_methods(service.methods)
    }

    /// Whether `method_id` is public.
    pub fn is_public(&self, method_id: u16) -> bool {
        self.public.contains(&method_id)
    }
}

/// Applies an [`AuthPolicy`] with an [`Authenticator`].
#[derive(Debug)]
pub struct AuthLayer<A> {
    authenticator: Arc<A>,
    policy: Arc<AuthPolicy>,
}

impl<A> Clone for AuthLayer<A> {
    fn clone(&self) -> Self {
        Self {
            authenticator: Arc::clone(&self.authenticator),
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<A: Authenticator> AuthLayer<A> {
    /// A layer that lets public methods through and asks `authenticator` about the rest.
    pub fn new(authenticator: A, policy: AuthPolicy) -> Self {
        Self {
            authenticator: Arc::new(authenticator),
            policy: Arc::new(policy),
        }
    }
}

impl<S, A> Layer<S> for AuthLayer<A> {
    type Service = Auth<S, A>;

    fn layer(&self, inner: S) -> Auth<S, A> {
        Auth {
            inner,
            authenticator: Arc::clone(&self.authenticator),
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Debug)]
pub struct Auth<S, A> {
    inner: S,
    authenticator: Arc<A>,
    policy: Arc<AuthPolicy>,
}

impl<S: Clone, A> Clone for Auth<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            authenticator: Arc::clone(&self.authenticator),
            policy: Arc::clone(&self.policy),
        }
    }
}

impl<S, A> Auth<S, A> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, A, B> Service<ServerRequest<B>> for Auth<S, A>
where
    S: Service<ServerRequest<B>>,
    S::Error: Into<BoxError>,
    A: Authenticator,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<
        Ready<Result<S::Response, BoxError>>,
        futures::future::MapErr<S::Future, fn(S::Error) -> BoxError>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: ServerRequest<B>) -> Self::Future {
        let ctx = req.context();
        if !self.policy.is_public(ctx.method_id())
            && let Err(status) = self.authenticator.authenticate(ctx)
        {
            return Either::Left(futures::future::ready(Err(Box::new(status))));
        }
        Either::Right(
            self.inner
                .call(req)
                .map_err(Into::into as fn(S::Error) -> BoxError),
        )
    }
}
