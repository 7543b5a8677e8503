//! The plugin host: wasmtime components, one instance per plugin, each call bounded in time
//! (epoch interruption: the guest gives the thread back every tick, and is stopped when its
//! budget is spent) and memory (a refused growth traps), with a WASI context that grants
//! nothing (stdout and stderr go to the server's log).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use qrpc::Status;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::{API_MAJOR, API_VERSION, Event, EventKind, PluginError, bounded_reason};
use crate::config::PluginConfig;

wasmtime::component::bindgen!({
    path: "../plugin-api/wit",
    world: "plugin",
    exports: { default: async },
});

use qpq::plugin::types as wit;

/// How often the epoch advances: a guest gives the thread back at least this often.
const TICK: Duration = Duration::from_millis(5);

/// The most a plugin may write to stdout and stderr in one line kept in the log.
const MAX_LOG_LINE: usize = 2048;

/// What a plugin's store holds.
struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// Ticks this call may still run.
    ticks_left: u64,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A loaded plugin: its instance, and what it subscribed to.
struct Loaded {
    config: PluginConfig,
    subscriptions: Vec<EventKind>,
    /// One call at a time; the instance keeps the plugin's state between calls.
    instance: tokio::sync::Mutex<Instance>,
    component: Component,
    /// What the plugin may still log (shared by its instances, so a restart resets nothing).
    log_budget: Arc<std::sync::Mutex<LogBudget>>,
}

/// What compiling and instantiating plugins needs; shared with the calls' tasks, so the
/// epoch keeps advancing for as long as any call may run.
struct Runtime {
    engine: Engine,
    linker: Linker<State>,
    /// Tells the epoch thread to end.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

struct Instance {
    store: Store<State>,
    plugin: Plugin,
}

/// The plugins of a server.
pub(super) struct Host {
    runtime: Arc<Runtime>,
    configs: Vec<PluginConfig>,
    loaded: RwLock<Arc<Vec<Arc<Loaded>>>>,
}

fn load_error(config: &PluginConfig, reason: impl std::fmt::Display) -> PluginError {
    PluginError::Load {
        name: config.name.clone(),
        reason: reason.to_string(),
    }
}

impl Host {
    /// Compiles, checks and initialises every configured plugin.
    pub(super) async fn load(configs: Vec<PluginConfig>) -> Result<Self, PluginError> {
        let mut wasm = wasmtime::Config::new();
        wasm.epoch_interruption(true);
        let engine = Engine::new(&wasm).map_err(|e| PluginError::Load {
            name: "(engine)".into(),
            reason: e.to_string(),
        })?;
        let mut linker = Linker::<State>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| PluginError::Load {
            name: "(linker)".into(),
            reason: e.to_string(),
        })?;
        // The epoch advances on a thread of its own: a guest that loops on a runtime thread
        // (a current-thread runtime, or both workers busy) must still reach its deadline.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticking = engine.clone();
        let stopping = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("qpq-plugin-epoch".into())
            .spawn(move || {
                while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| PluginError::Load {
                name: "(epoch thread)".into(),
                reason: e.to_string(),
            })?;
        let host = Self {
            runtime: Arc::new(Runtime {
                engine,
                linker,
                stop,
            }),
            configs,
            loaded: RwLock::new(Arc::new(Vec::new())),
        };
        let loaded = host.load_all().await?;
        *host
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(loaded);
        Ok(host)
    }

    async fn load_all(&self) -> Result<Vec<Arc<Loaded>>, PluginError> {
        let mut loaded = Vec::with_capacity(self.configs.len());
        for config in &self.configs {
            loaded.push(Arc::new(self.load_one(config.clone()).await?));
            tracing::info!(plugin = %config.name, path = %config.path.display(), "plugin loaded");
        }
        Ok(loaded)
    }

    async fn load_one(&self, config: PluginConfig) -> Result<Loaded, PluginError> {
        let bytes = tokio::fs::read(&config.path).await.map_err(|e| {
            load_error(
                &config,
                format!("cannot read {}: {e}", config.path.display()),
            )
        })?;
        // Compiling takes a while: not on a runtime thread.
        let engine = self.runtime.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| load_error(&config, e))?
            .map_err(|e| load_error(&config, format!("not a WebAssembly component: {e}")))?;
        check_version(&self.runtime.engine, &component).map_err(|e| load_error(&config, e))?;
        let log_budget = LogBudget::shared();
        let deadline = Duration::from_millis(config.time_budget_ms) + SLACK;
        let mut instance = tokio::time::timeout(
            deadline * 2,
            self.runtime.instantiate(&config, &component, &log_budget),
        )
        .await
        .map_err(|_| load_error(&config, "init took too long"))??;
        let subscriptions = tokio::time::timeout(
            deadline,
            call_bounded(&mut instance.store, config.time_budget_ms, |store| {
                let plugin = &instance.plugin;
                Box::pin(async move { plugin.qpq_plugin_hooks().call_subscriptions(store).await })
            }),
        )
        .await
        .map_err(|_| load_error(&config, "subscriptions took too long"))?
        .map_err(|e| load_error(&config, format!("subscriptions failed: {e}")))?;
        Ok(Loaded {
            subscriptions: subscriptions.into_iter().map(EventKind::from).collect(),
            instance: tokio::sync::Mutex::new(instance),
            component,
            config,
            log_budget,
        })
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.current()
            .iter()
            .map(|p| p.config.name.clone())
            .collect()
    }

    fn current(&self) -> Arc<Vec<Arc<Loaded>>> {
        Arc::clone(
            &self
                .loaded
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    pub(super) async fn reload(&self) -> Result<(), PluginError> {
        let fresh = self.load_all().await?;
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
        tracing::info!("plugins reloaded");
        Ok(())
    }

    pub(super) async fn check(&self, event: impl FnOnce() -> Event) -> Result<(), Status> {
        let plugins = self.current();
        let mut event_data: Option<(EventKind, wit::Event)> = None;
        let mut make = Some(event);
        for plugin in plugins.iter() {
            let kind = match &event_data {
                Some((kind, _)) => *kind,
                None => {
                    let Some(make) = make.take() else { break };
                    let event = make();
                    let kind = event.kind();
                    event_data = Some((kind, to_wit(event)));
                    kind
                }
            };
            if !plugin.subscriptions.contains(&kind) {
                continue;
            }
            let Some((_, wit_event)) = &event_data else {
                break;
            };
            // The call runs in a task of its own: a caller that goes away (a cancelled
            // request) does not cut the plugin's call short and break its instance for
            // everyone.
            let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
            let runtime = Arc::clone(&self.runtime);
            let loaded = Arc::clone(plugin);
            let event = wit_event.clone();
            tokio::spawn(async move {
                if let Some(answer) = ask(runtime, loaded, event, &answer_tx).await {
                    let _ = answer_tx.send(answer);
                }
            });
            let answer = match answer_rx.await {
                Ok(answer) => answer,
                Err(_) => Err("the call's task failed".to_owned()),
            };
            match answer {
                Ok(wit::Verdict::Allow) => {}
                Ok(wit::Verdict::Deny(denial)) => {
                    return Err(status(denial.code, &bounded_reason(&denial.reason)));
                }
                Err(err) => {
                    tracing::warn!(plugin = %plugin.config.name, %err, "plugin failed");
                    if !plugin.config.fail_open {
                        return Err(Status::unavailable(format!(
                            "plugin {} failed; try again later",
                            plugin.config.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Runtime {
    /// A fresh instance of `component`, initialised with its configuration.
    async fn instantiate(
        &self,
        config: &PluginConfig,
        component: &Component,
        budget: &Arc<std::sync::Mutex<LogBudget>>,
    ) -> Result<Instance, PluginError> {
        let name = config.name.clone();
        let wasi = WasiCtxBuilder::new()
            .stdout(LogStream::new(name.clone(), "stdout", Arc::clone(budget)))
            .stderr(LogStream::new(name, "stderr", Arc::clone(budget)))
            .build();
        // Each linear memory up to the limit, and few of them; tables small (their storage is
        // the host's).
        let limits = StoreLimitsBuilder::new()
            .memory_size(config.memory_limit_mib as usize * 1024 * 1024)
            .memories(2)
            .tables(8)
            .table_elements(100_000)
            .instances(16)
            .trap_on_grow_failure(true)
            .build();
        let mut table = ResourceTable::new();
        // Host-side WASI resources (streams, pollables) a plugin may hold at once.
        table.set_max_capacity(1000);
        let mut store = Store::new(
            &self.engine,
            State {
                wasi,
                table,
                limits,
                ticks_left: 0,
            },
        );
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut store| {
            let state = store.data_mut();
            if state.ticks_left == 0 {
                return Ok(UpdateDeadline::Interrupt);
            }
            state.ticks_left -= 1;
            // Give the thread back, then run one more tick.
            Ok(UpdateDeadline::Yield(1))
        });
        set_budget(&mut store, config.time_budget_ms);
        let plugin = Plugin::instantiate_async(&mut store, component, &self.linker)
            .await
            .map_err(|e| load_error(config, format!("cannot instantiate: {e}")))?;
        let pairs = super::flatten_config(&config.config);
        let mut instance = Instance { store, plugin };
        let init = call_bounded(&mut instance.store, config.time_budget_ms, |store| {
            let plugin = &instance.plugin;
            let pairs = &pairs;
            Box::pin(async move { plugin.qpq_plugin_hooks().call_init(store, pairs).await })
        })
        .await
        .map_err(|e| load_error(config, format!("init failed: {e}")))?;
        init.map_err(|reason| {
            load_error(config, format!("init refused: {}", bounded_reason(&reason)))
        })?;
        Ok(instance)
    }
}

/// How much longer than its budget a call may take in all (host calls included: a plugin
/// waiting on a WASI clock is not running guest code, so the epoch does not stop it).
const SLACK: Duration = Duration::from_millis(100);

/// One call of `plugin`'s hook, bounded in all by its budget plus [`SLACK`]; a failed or
/// overdue instance is replaced for the next call.
async fn ask(
    runtime: Arc<Runtime>,
    plugin: Arc<Loaded>,
    event: wit::Event,
    caller: &tokio::sync::oneshot::Sender<Result<wit::Verdict, String>>,
) -> Option<Result<wit::Verdict, String>> {
    let budget = plugin.config.time_budget_ms;
    let deadline = Duration::from_millis(budget) + SLACK;
    let mut instance = plugin.instance.lock().await;
    // A caller that went away while this call queued gets no call: abandoned requests do not
    // pile up in front of the others. A call that started finishes, whatever its caller does.
    if caller.is_closed() {
        return None;
    }
    let result = {
        let Instance {
            store,
            plugin: bindings,
        } = &mut *instance;
        let event = &event;
        let call = call_bounded(store, budget, |store| {
            Box::pin(async move {
                bindings
                    .qpq_plugin_hooks()
                    .call_on_event(store, event)
                    .await
            })
        });
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(format!("took longer than {} ms", deadline.as_millis())),
        }
    };
    Some(match result {
        Ok(verdict) => Ok(verdict),
        Err(err) => {
            // A trapped or abandoned instance cannot be entered again: start a fresh one
            // (its state is lost) for the next call.
            let fresh = tokio::time::timeout(
                deadline * 2,
                runtime.instantiate(&plugin.config, &plugin.component, &plugin.log_budget),
            )
            .await;
            match fresh {
                Ok(Ok(fresh)) => *instance = fresh,
                Ok(Err(restart)) => {
                    tracing::warn!(plugin = %plugin.config.name, %restart, "plugin not restarted");
                }
                Err(_) => {
                    tracing::warn!(plugin = %plugin.config.name, "plugin restart timed out");
                }
            }
            Err(err)
        }
    })
}

fn set_budget(store: &mut Store<State>, budget_ms: u64) {
    let ticks = budget_ms.div_ceil(TICK.as_millis() as u64).max(1);
    store.data_mut().ticks_left = ticks;
    store.set_epoch_deadline(1);
}

/// Runs `call` with the time budget; describes a failure (an interrupt, a trap, memory).
async fn call_bounded<'a, R>(
    store: &'a mut Store<State>,
    budget_ms: u64,
    call: impl FnOnce(
        &'a mut Store<State>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
    >,
) -> Result<R, String> {
    set_budget(store, budget_ms);
    call(store).await.map_err(|err| describe(&err, budget_ms))
}

fn describe(err: &wasmtime::Error, budget_ms: u64) -> String {
    match err.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => format!("ran past its time budget of {budget_ms} ms"),
        Some(trap) => format!("trapped: {trap}"),
        None => {
            let text = format!("{err:#}");
            if text.contains("growing memory") {
                "exceeded its memory limit".to_owned()
            } else {
                text
            }
        }
    }
}

/// Refuses a component that does not export `qpq:plugin/hooks` of a supported major version.
fn check_version(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let prefix = "qpq:plugin/hooks@";
    let exported: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect();
    let Some(version) = exported.iter().find_map(|name| name.strip_prefix(prefix)) else {
        return Err(format!(
            "exports no `qpq:plugin/hooks` interface (it exports: {}); build it with qpq-plugin-api",
            if exported.is_empty() {
                "nothing".to_owned()
            } else {
                exported.join(", ")
            }
        ));
    };
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok());
    if major != Some(API_MAJOR) {
        return Err(format!(
            "built for plugin API {version}; this server supports {API_MAJOR}.x (up to {API_VERSION})"
        ));
    }
    Ok(())
}

fn status(code: wit::Code, reason: &str) -> Status {
    let code = match code {
        wit::Code::PermissionDenied => qrpc::Code::PermissionDenied,
        wit::Code::ResourceExhausted => qrpc::Code::ResourceExhausted,
        wit::Code::InvalidArgument => qrpc::Code::InvalidArgument,
        wit::Code::FailedPrecondition => qrpc::Code::FailedPrecondition,
        wit::Code::Unauthenticated => qrpc::Code::Unauthenticated,
        wit::Code::Unavailable => qrpc::Code::Unavailable,
    };
    Status::new(code, reason)
}

impl From<wit::EventKind> for EventKind {
    fn from(kind: wit::EventKind) -> Self {
        match kind {
            wit::EventKind::Registration => Self::Registration,
            wit::EventKind::Login => Self::Login,
            wit::EventKind::Enqueue => Self::Enqueue,
            wit::EventKind::ChannelCreated => Self::ChannelCreated,
            wit::EventKind::Membership => Self::Membership,
            wit::EventKind::BlobUpload => Self::BlobUpload,
            wit::EventKind::FederationPeer => Self::FederationPeer,
        }
    }
}

fn to_wit(event: Event) -> wit::Event {
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let data = match event {
        Event::Registration {
            user,
            invite,
            remote_address,
        } => wit::EventData::Registration(wit::Registration {
            user,
            invite,
            remote_address,
        }),
        Event::Login {
            user,
            remote_address,
        } => wit::EventData::Login(wit::Login {
            user,
            remote_address,
        }),
        Event::Enqueue {
            sender,
            recipient,
            first_contact,
            size,
        } => wit::EventData::Enqueue(wit::Enqueue {
            sender,
            recipient,
            first_contact,
            size,
        }),
        Event::ChannelCreated {
            creator,
            channel,
            members,
        } => wit::EventData::ChannelCreated(wit::ChannelCreated {
            creator,
            channel,
            members,
        }),
        Event::Membership {
            actor,
            channel,
            added,
            removed,
        } => wit::EventData::Membership(wit::Membership {
            actor,
            channel,
            added,
            removed,
        }),
        Event::BlobUpload { user, size } => {
            wit::EventData::BlobUpload(wit::BlobUpload { user, size })
        }
        Event::FederationPeer { domain } => {
            wit::EventData::FederationPeer(wit::FederationPeer { domain })
        }
    };
    wit::Event { time_ms, data }
}

/// Lines a plugin may log per second (both streams together); beyond, lines are dropped and
/// counted, so a plugin cannot flood the server's log.
const LOG_LINES_PER_SECOND: u32 = 200;

/// A plugin's stdout or stderr: each line goes to the server's log, tagged with the plugin.
#[derive(Clone)]
struct LogStream {
    plugin: String,
    stream: &'static str,
    budget: Arc<std::sync::Mutex<LogBudget>>,
}

/// What a plugin may still log: the server's own rate limiter (a GCRA bucket of
/// [`LOG_LINES_PER_SECOND`], as for its abuse limits), and the lines dropped since the last
/// one logged.
struct LogBudget<C: governor::clock::Clock = governor::clock::DefaultClock> {
    limiter: governor::RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        C,
        governor::middleware::NoOpMiddleware<C::Instant>,
    >,
    dropped: u64,
}

impl LogStream {
    fn new(plugin: String, stream: &'static str, budget: Arc<std::sync::Mutex<LogBudget>>) -> Self {
        Self {
            plugin,
            stream,
            budget,
        }
    }
}

impl LogBudget {
    fn shared() -> Arc<std::sync::Mutex<Self>> {
        Arc::new(std::sync::Mutex::new(Self::with_clock(
            governor::clock::DefaultClock::default(),
        )))
    }
}

impl<C: governor::clock::Clock> LogBudget<C> {
    fn with_clock(clock: C) -> Self {
        Self {
            limiter: governor::RateLimiter::direct_with_clock(
                crate::abuse::per_second(LOG_LINES_PER_SECOND),
                clock,
            ),
            dropped: 0,
        }
    }

    /// Whether one more line may be logged now, and how many were dropped before it (told
    /// with the next line that is logged).
    fn take(&mut self) -> (bool, u64) {
        if self.limiter.check().is_ok() {
            (true, std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            (false, 0)
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LogWriter {
            plugin: self.plugin.clone(),
            stream: self.stream,
            line: Vec::new(),
            budget: Arc::clone(&self.budget),
        })
    }
}

/// Collects bytes into lines and logs each (at most [`MAX_LOG_LINE`] bytes of it).
struct LogWriter {
    plugin: String,
    stream: &'static str,
    line: Vec<u8>,
    budget: Arc<std::sync::Mutex<LogBudget>>,
}

impl LogWriter {
    fn emit(&mut self) {
        let (allowed, dropped) = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if dropped > 0 {
            tracing::warn!(target: "qpq_server::plugin", plugin = %self.plugin, dropped, "plugin output over its rate dropped");
        }
        if !allowed {
            self.line.clear();
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        tracing::info!(target: "qpq_server::plugin", plugin = %self.plugin, stream = self.stream, "{text}");
        self.line.clear();
    }
}

impl tokio::io::AsyncWrite for LogWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        for &byte in buf {
            if byte == b'\n' {
                self.emit();
            } else if self.line.len() < MAX_LOG_LINE {
                self.line.push(byte);
            }
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.line.is_empty() {
            self.emit();
        }
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod log_tests {
    use super::{LOG_LINES_PER_SECOND, LogBudget};
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn a_plugins_log_is_limited_and_the_dropped_lines_are_counted() {
        let clock = FakeRelativeClock::default();
        let mut budget = LogBudget::with_clock(clock.clone());
        for _ in 0..LOG_LINES_PER_SECOND {
            assert_eq!(budget.take(), (true, 0));
        }
        for _ in 0..7 {
            assert_eq!(budget.take(), (false, 0));
        }
        // A second later the bucket is full again; the first line logged tells of the 7.
        clock.advance(Duration::from_secs(1));
        assert_eq!(budget.take(), (true, 7));
        assert_eq!(budget.take(), (true, 0));
    }
}
