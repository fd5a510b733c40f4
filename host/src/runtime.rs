//! The WebAssembly side of the host: one engine and linker for the process, one
//! pre-instantiated component per service, and per connection either a `Store` of its
//! own (isolated mode, the default) or a session in one of a few shared instances
//! (shared mode).
//!
//! A trap poisons its whole `Store`. In isolated mode a `Store` never holds more than
//! one connection: a guest that panics, loops or exhausts its memory takes down only
//! the connection it serves. In shared mode it takes down the connections of its
//! instance (each closed with 1011), and a fresh instance serves new ones.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::config::{Grants, Profiler, SandboxLimits};
use crate::mappings::{Memories, MemoryPool};
use crate::topics::{self, InboxSender, Published, Topics};
use crate::{Error, Result};

pub(crate) mod bindings {
    //! Host bindings of the `wasmsocket:service/service` world.
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "service",
        imports: { default: trappable },
    });
}

use bindings::exports::wasmsocket::service::handler::Acceptance;
#[cfg(test)]
pub(crate) use bindings::wasmsocket::service::types::CloseFrame;
pub(crate) use bindings::wasmsocket::service::types::{
    CallbackError, Callbacks, CallerError, Header, Message, Principal, UpgradeRejection,
    UpgradeRequest,
};

/// How often the epoch advances; callback deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// On how many epoch ticks a long-running callback tries to hand its worker's other
/// tasks to another thread (see [`crate::wasi::hand_off_worker`]).
const HAND_OFF_ATTEMPTS: u64 = 5;

/// Linear memories kept, zeroed, for reuse after their connections end (each a
/// reservation of address space, kernel mappings, and the pages its guest wrote, now
/// zero, until reused).
const KEPT_MEMORIES: usize = 1024;

/// Most resource-table entries (WASI streams, callers) an isolated instance may hold.
const MAX_TABLE_ENTRIES: usize = 1024;

/// Most resource-table entries and component handles a shared instance may hold:
/// one per connection (its caller) and some to spare.
const MAX_SHARED_ENTRIES: usize = 1 << 21;

/// The engine and linker shared by every service, and the thread that drives
/// callback deadlines.
pub(crate) struct Runtime {
    engine: Engine,
    linker: Linker<StoreData>,
    topics: Arc<Topics>,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// The engine and linker; guests' topics are `topics`.
    pub(crate) fn new(topics: Arc<Topics>, profiler: Profiler) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // Every isolated connection maps a linear memory, and Linux caps a process's
        // mappings (vm.max_map_count, 65530 by default). No guard region in front of
        // linear memory and no copy-on-write image mapping in the middle of it took a
        // connection from 7 mappings to 4 (bounds checks are still elided: the 4 GiB
        // reservation stays); the host's own mappings (below) merge with their
        // neighbours, down to 3, and no fiber stack (synchronous calls) to 2.
        config.guard_before_linear_memory(false);
        config.memory_init_cow(false);
        // Guest calls are synchronous, on the worker thread's own stack (decision 4),
        // and the component-model concurrency machinery is not used.
        config.concurrency_support(false);
        // Memories of ended connections serve new ones: no map, unmap (and cross-core
        // TLB flush) and page faults per connection.
        config.with_host_memory(Arc::new(Memories(MemoryPool::new(KEPT_MEMORIES))));
        config.profiler(match profiler {
            Profiler::None => wasmtime::ProfilingStrategy::None,
            Profiler::PerfMap => wasmtime::ProfilingStrategy::PerfMap,
        });
        let engine = Engine::new(&config).map_err(Error::Engine)?;
        let mut linker = Linker::new(&engine);
        crate::wasi::add_to_linker(&mut linker).map_err(Error::Engine)?;
        bindings::Service::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |data: &mut StoreData| data,
        )
        .map_err(Error::Engine)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let ticker_engine = engine.weak();
        std::thread::Builder::new()
            .name("wasmsocket-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| Error::Engine(e.into()))?;
        Ok(Self {
            engine,
            linker,
            topics,
            ticker_stop,
        })
    }

    /// Compiles and links a component, and asks it which callbacks it implements.
    pub(crate) fn load(
        &self,
        service: &str,
        path: &Path,
        limits: &SandboxLimits,
        grants: &Grants,
        shared_instances: Option<usize>,
        memory_gauge: Arc<AtomicI64>,
    ) -> Result<ServiceComponent> {
        for (index, dir) in grants.dirs.iter().enumerate() {
            if !dir.host.is_dir() {
                return Err(Error::ConfigInvalid {
                    path: Default::default(),
                    message: format!(
                        "service {service}: grants.dirs[{index}].host: {} is not a directory",
                        dir.host.display()
                    ),
                });
            }
        }
        if !grants.dirs.is_empty() && !crate::wasi::on_multi_thread_runtime() {
            // Its file operations block on tokio, which only the multi-thread
            // runtime allows (`block_in_place`; see wasi.rs).
            return Err(Error::ConfigInvalid {
                path: Default::default(),
                message: format!(
                    "service {service}: grants.dirs needs tokio's multi-thread runtime"
                ),
            });
        }
        let error = |source: wasmtime::Error| Error::Component {
            service: service.to_owned(),
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::read(path).map_err(|e| error(e.into()))?;
        let component = Component::new(&self.engine, &bytes).map_err(error)?;
        let pre = self.linker.instantiate_pre(&component).map_err(error)?;
        let pre = bindings::ServicePre::new(pre).map_err(error)?;
        let mut loaded = ServiceComponent {
            engine: self.engine.clone(),
            pre,
            limits: limits.clone(),
            grants: grants.clone(),
            callbacks: Callbacks::all(),
            topics: self.topics.clone(),
            pool: shared_instances.map(Pool::new),
            memory_gauge,
        };
        let mut instance = loaded.instantiate().map_err(error)?;
        loaded.callbacks = instance.implemented_callbacks().map_err(error)?;
        Ok(loaded)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// A compiled, linked component ready to be instantiated per connection.
pub(crate) struct ServiceComponent {
    engine: Engine,
    pre: bindings::ServicePre<StoreData>,
    limits: SandboxLimits,
    grants: Grants,
    callbacks: Callbacks,
    topics: Arc<Topics>,
    /// Shared mode's instances; `None` in isolated mode.
    pool: Option<Pool>,
    /// The service's `wasmsocket_guest_memory_bytes`.
    memory_gauge: Arc<AtomicI64>,
}

impl ServiceComponent {
    /// The instance a new connection's upgrade hook and session run in: a fresh one in
    /// isolated mode, one of the pool's in shared mode.
    pub(crate) async fn instance(&self) -> wasmtime::Result<InstanceHandle> {
        match &self.pool {
            None => Ok(InstanceHandle::Own(Box::new(self.instantiate()?))),
            Some(pool) => Ok(InstanceHandle::Shared(pool.get(self).await?)),
        }
    }

    /// The callbacks the component implements.
    pub(crate) fn callbacks(&self) -> Callbacks {
        self.callbacks
    }

    /// The component's WASI context: stdout and stderr to the host's, and only what
    /// the service's `grants` allow.
    fn wasi(&self) -> wasmtime::Result<WasiCtx> {
        let mut builder = WasiCtx::builder();
        builder.inherit_stdout().inherit_stderr();
        // Both random interfaces draw from the worker thread's generator: a context
        // then holds no generator state of its own (it had two, about 300 B).
        builder
            .secure_random(ThreadRandom)
            .insecure_random(ThreadRandom);
        // No sockets at all: not even one that could never connect (the sockets'
        // synchronous bindings may block on tokio where it is not allowed: see wasi.rs).
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &self.grants.env {
            builder.env(key, value);
        }
        for dir in &self.grants.dirs {
            let perms = if dir.writable {
                wasmtime_wasi::FsPerms::ReadWrite
            } else {
                wasmtime_wasi::FsPerms::ReadOnly
            };
            builder.preopened_dir(&dir.host, &dir.guest, perms)?;
        }
        Ok(builder.build())
    }

    /// A fresh instance in a store of its own.
    pub(crate) fn instantiate(&self) -> wasmtime::Result<Instance> {
        let entries = if self.pool.is_some() {
            MAX_SHARED_ENTRIES
        } else {
            MAX_TABLE_ENTRIES
        };
        let mut table = ResourceTable::new();
        table.set_max_capacity(entries);
        let data = StoreData {
            wasi: self.wasi()?,
            table,
            limits: Limiter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.max_memory)
                    .instances(16)
                    .tables(16)
                    .memories(4)
                    .build(),
                gauge: self.memory_gauge.clone(),
                held: 0,
            },
            max_write_buffer: self.limits.max_write_buffer,
            ticks_left: 0,
            topics: self.topics.clone(),
            current: None,
        };
        let mut store = Store::new(&self.engine, data);
        store.limiter(|data| &mut data.limits);
        store.set_max_component_handles(entries);
        let ticks = self
            .limits
            .callback_deadline()
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1) as u64;
        // A guest runs until its callback's budget of ticks is spent: then it traps.
        // Once it has run for more than a tick, the worker's other tasks move to
        // another thread. The hand-off is tried on a few ticks: it fails when the new
        // thread is slow to start (a busy machine), and once it has worked a repeat
        // costs only its short wait.
        store.epoch_deadline_callback(move |mut store| {
            let data = store.data_mut();
            if data.ticks_left <= 1 {
                return Ok(UpdateDeadline::Interrupt);
            }
            data.ticks_left -= 1;
            let ran = ticks - data.ticks_left;
            if (2..2 + HAND_OFF_ATTEMPTS).contains(&ran) {
                crate::wasi::hand_off_worker();
            }
            Ok(UpdateDeadline::Continue(1))
        });
        let mut instance = Instance {
            store,
            bindings: None,
            ticks,
            trapped: false,
            blocking: !self.grants.dirs.is_empty(),
        };
        instance.arm_deadline();
        let bindings = instance.run(|store| self.pre.instantiate(store))?;
        instance.bindings = Some(bindings);
        Ok(instance)
    }
}

/// What a store holds: the sandbox's WASI context (no files, network or environment),
/// its resources and its limits.
pub(crate) struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
    max_write_buffer: usize,
    /// Epoch ticks the running callback may still use.
    ticks_left: u64,
    topics: Arc<Topics>,
    /// The caller of the connection whose callback is running: what the `caller`
    /// functions act on. `None` outside session callbacks.
    current: Option<u32>,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// `wasi:random`'s source: the thread's generator (`rand::rng()`, a ChaCha generator
/// seeded and reseeded from the operating system), looked up on every call, so that it
/// has no size and a store carries no generator.
struct ThreadRandom;

impl rand::TryRng for ThreadRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        rand::rng().try_next_u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        rand::rng().try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        rand::rng().try_fill_bytes(dst)
    }
}

impl rand::TryCryptoRng for ThreadRandom {}

/// The store's limits, and the linear memory it holds, counted into the service's
/// memory gauge.
struct Limiter {
    limits: StoreLimits,
    gauge: Arc<AtomicI64>,
    /// Bytes of linear memory this store has.
    held: i64,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            let grown = desired.saturating_sub(current) as i64;
            self.held += grown;
            self.gauge.fetch_add(grown, Ordering::Relaxed);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.held, Ordering::Relaxed);
    }
}

/// One connection's state as its session sees it through the `caller` functions.
#[derive(Debug)]
pub(crate) struct CallerState {
    id: String,
    secure: bool,
    subprotocol: Option<String>,
    attributes: HashMap<String, String>,
    /// Frames queued by the running callback, sent when it returns.
    outbox: Vec<Outgoing>,
    /// Bytes in `outbox`.
    queued: usize,
    /// A close frame was sent or received.
    closing: bool,
    /// The connection's number, for topics.
    number: u64,
    /// Where topics deliver to this connection; made on the first subscription.
    inbox: Option<InboxSender>,
    /// The receiving end of a just-made inbox, for the connection to take.
    new_inbox: Option<topics::Inbox>,
    subscriptions: std::collections::HashSet<String>,
    timers: HashMap<u32, Timer>,
}

/// A timer set by the session.
#[derive(Debug, Clone, Copy)]
struct Timer {
    due: tokio::time::Instant,
    period: Option<Duration>,
}

impl CallerState {
    /// When the session's next timer is due, if it has one.
    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.timers.values().map(|timer| timer.due).min()
    }
}

/// Most timers one connection may have set.
const MAX_TIMERS: usize = 16;

/// A frame a session asked to send.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close {
        code: u16,
        reason: String,
        timeout: Duration,
    },
}

/// Whether an endpoint may send `code` in a close frame (RFC 6455 §7.4).
pub(crate) fn is_sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Cuts a close reason to the 123 bytes a close frame has room for.
pub(crate) fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

impl StoreData {
    fn caller(&mut self, caller: &Resource<CallerState>) -> wasmtime::Result<&mut CallerState> {
        Ok(self.table.get_mut(caller)?)
    }

    /// The caller of the running callback. Outside one (in `upgrade`, say) a `caller`
    /// function traps: there is no connection for it to act on.
    fn current(&mut self) -> wasmtime::Result<&mut CallerState> {
        let rep = self.current.ok_or_else(|| {
            wasmtime::format_err!("a caller function was called outside a session callback")
        })?;
        Ok(self.table.get_mut(&Resource::new_borrow(rep))?)
    }

    fn enqueue(
        &mut self,
        frame: Outgoing,
        len: usize,
    ) -> wasmtime::Result<Result<(), CallerError>> {
        let limit = self.max_write_buffer;
        let state = self.current()?;
        if state.closing {
            return Ok(Err(CallerError::ConnectionClosed));
        }
        if state.queued + len > limit {
            return Ok(Err(CallerError::WriteBufferFull));
        }
        state.queued += len;
        state.outbox.push(frame);
        Ok(Ok(()))
    }

    /// Queues a text or binary message: a `write-*` call, or a callback's reply.
    fn enqueue_message(&mut self, message: Message) -> wasmtime::Result<Result<(), CallerError>> {
        let (frame, len) = match message {
            Message::Text(text) => {
                let len = text.len();
                (Outgoing::Text(text), len)
            }
            Message::Binary(data) => {
                let len = data.len();
                (Outgoing::Binary(data), len)
            }
        };
        self.enqueue(frame, len)
    }

    fn enqueue_control(
        &mut self,
        frame: fn(Vec<u8>) -> Outgoing,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), CallerError>> {
        if data.len() > 125 {
            return Ok(Err(CallerError::ControlFrameTooLarge));
        }
        let len = data.len();
        self.enqueue(frame(data), len)
    }
}

impl bindings::wasmsocket::service::types::Host for StoreData {}

impl bindings::wasmsocket::service::caller::Host for StoreData {
    fn id(&mut self) -> wasmtime::Result<String> {
        Ok(self.current()?.id.clone())
    }

    fn write_text(&mut self, data: String) -> wasmtime::Result<Result<(), CallerError>> {
        self.enqueue_message(Message::Text(data))
    }

    fn write_binary(&mut self, data: Vec<u8>) -> wasmtime::Result<Result<(), CallerError>> {
        self.enqueue_message(Message::Binary(data))
    }

    fn ping(&mut self, data: Vec<u8>) -> wasmtime::Result<Result<(), CallerError>> {
        self.enqueue_control(Outgoing::Ping, data)
    }

    fn pong(&mut self, data: Vec<u8>) -> wasmtime::Result<Result<(), CallerError>> {
        self.enqueue_control(Outgoing::Pong, data)
    }

    fn close(
        &mut self,
        code: u16,
        reason: String,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<(), CallerError>> {
        if !is_sendable_close_code(code) {
            return Ok(Err(CallerError::InvalidCloseCode(code)));
        }
        if reason.len() > 123 {
            return Ok(Err(CallerError::ControlFrameTooLarge));
        }
        let frame = Outgoing::Close {
            code,
            reason,
            timeout: Duration::from_millis(timeout_ms.into()),
        };
        let result = self.enqueue(frame, 0)?;
        if result.is_ok() {
            self.current()?.closing = true;
        }
        Ok(result)
    }

    fn is_open(&mut self) -> wasmtime::Result<bool> {
        Ok(!self.current()?.closing)
    }

    fn is_secure(&mut self) -> wasmtime::Result<bool> {
        Ok(self.current()?.secure)
    }

    fn negotiated_subprotocol(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.current()?.subprotocol.clone())
    }

    fn set_attribute(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        self.current()?.attributes.insert(key, value);
        Ok(())
    }

    fn get_attribute(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.current()?.attributes.get(&key).cloned())
    }

    fn remove_attribute(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.current()?.attributes.remove(&key))
    }

    fn subscribe(&mut self, topic: String) -> wasmtime::Result<Result<(), CallerError>> {
        let topics = self.topics.clone();
        let state = self.current()?;
        if state.subscriptions.contains(&topic) {
            return Ok(Ok(()));
        }
        if topic.len() > topics::MAX_TOPIC_LEN
            || state.subscriptions.len() >= topics::MAX_SUBSCRIPTIONS
        {
            return Ok(Err(CallerError::LimitExceeded));
        }
        let inbox = match &state.inbox {
            Some(inbox) => inbox.clone(),
            None => {
                let (sender, receiver) = topics::inbox();
                state.inbox = Some(sender.clone());
                state.new_inbox = Some(receiver);
                sender
            }
        };
        topics.subscribe(&topic, state.number, inbox);
        state.subscriptions.insert(topic);
        Ok(Ok(()))
    }

    fn unsubscribe(&mut self, topic: String) -> wasmtime::Result<()> {
        let topics = self.topics.clone();
        let state = self.current()?;
        if state.subscriptions.remove(&topic) {
            topics.unsubscribe(&topic, state.number);
        }
        Ok(())
    }

    fn publish(
        &mut self,
        topic: String,
        message: Message,
    ) -> wasmtime::Result<Result<u32, CallerError>> {
        let topics = self.topics.clone();
        let state = self.current()?;
        if topic.len() > topics::MAX_TOPIC_LEN {
            return Ok(Err(CallerError::LimitExceeded));
        }
        let published = match message {
            Message::Text(text) => Published::Text(text.into()),
            Message::Binary(data) => Published::Binary(data.into()),
        };
        Ok(Ok(topics.publish(&topic, state.number, &published)))
    }

    fn set_timer(
        &mut self,
        id: u32,
        delay_ms: u32,
        repeat: bool,
    ) -> wasmtime::Result<Result<(), CallerError>> {
        let state = self.current()?;
        if !state.timers.contains_key(&id) && state.timers.len() >= MAX_TIMERS {
            return Ok(Err(CallerError::LimitExceeded));
        }
        let delay = Duration::from_millis(delay_ms.max(1).into());
        let timer = Timer {
            due: tokio::time::Instant::now() + delay,
            period: repeat.then_some(delay),
        };
        state.timers.insert(id, timer);
        Ok(Ok(()))
    }

    fn cancel_timer(&mut self, id: u32) -> wasmtime::Result<()> {
        self.current()?.timers.remove(&id);
        Ok(())
    }
}

/// One component instance serving one connection.
pub(crate) struct Instance {
    store: Store<StoreData>,
    bindings: Option<bindings::Service>,
    ticks: u64,
    /// A call trapped: the store must not run guest code again (isolated mode; a
    /// shared instance's flag is its `SharedInstance::poisoned`).
    trapped: bool,
    /// Calls run where they may block (see [`Instance::run`]).
    blocking: bool,
}

/// What a callback left for its connection (see [`Instance::after_callback`]).
#[derive(Default)]
pub(crate) struct Aftermath {
    pub(crate) next_due: Option<tokio::time::Instant>,
    pub(crate) new_inbox: Option<topics::Inbox>,
}

/// What the upgrade hook decided.
pub(crate) enum Decision {
    Accept {
        session: Session,
        headers: Vec<Header>,
        subprotocol: Option<String>,
    },
    Reject(UpgradeRejection),
}

/// An accepted connection's session (the component's number for it) and the caller
/// its callbacks act on.
pub(crate) struct Session {
    session: u32,
    caller: Option<Resource<CallerState>>,
}

/// What the host knows of an accepted connection.
pub(crate) struct Accepted {
    pub(crate) number: u64,
    pub(crate) secure: bool,
    pub(crate) subprotocol: Option<String>,
}

/// A callback invocation.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    Open,
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    IdleTimeout,
    Close(u16, &'a str),
    Error(&'a str),
    Timer(u32),
}

impl Event<'_> {
    /// The callback flag this event is delivered to.
    pub(crate) fn callback(&self) -> Callbacks {
        match self {
            Event::Open => Callbacks::ON_OPEN,
            Event::Text(_) => Callbacks::ON_TEXT_MESSAGE,
            Event::Binary(_) => Callbacks::ON_BINARY_MESSAGE,
            Event::Ping(_) => Callbacks::ON_PING,
            Event::Pong(_) => Callbacks::ON_PONG,
            Event::IdleTimeout => Callbacks::ON_IDLE_TIMEOUT,
            Event::Close(..) => Callbacks::ON_CLOSE,
            Event::Error(_) => Callbacks::ON_ERROR,
            Event::Timer(_) => Callbacks::ON_TIMER,
        }
    }
}

impl Instance {
    fn arm_deadline(&mut self) {
        self.store.data_mut().ticks_left = self.ticks;
        self.store.set_epoch_deadline(1);
    }

    fn handler(&self) -> wasmtime::Result<&bindings::exports::wasmsocket::service::handler::Guest> {
        Ok(self
            .bindings
            .as_ref()
            .ok_or_else(|| wasmtime::format_err!("instance not initialised"))?
            .wasmsocket_service_handler())
    }

    fn implemented_callbacks(&mut self) -> wasmtime::Result<Callbacks> {
        self.arm_deadline();
        let handler = self.handler()?.clone();
        self.run(|store| handler.call_implemented_callbacks(store))
    }

    /// Runs a call into the guest: on this thread, or (for a guest granted
    /// directories, whose file operations block on tokio) where it may block.
    fn run<R>(&mut self, call: impl FnOnce(&mut Store<StoreData>) -> R) -> R {
        if self.blocking {
            crate::wasi::blocking(|| call(&mut self.store))
        } else {
            call(&mut self.store)
        }
    }

    /// Runs the upgrade hook. `Err` is a trap.
    pub(crate) fn upgrade(&mut self, request: &UpgradeRequest) -> wasmtime::Result<Decision> {
        self.arm_deadline();
        let handler = self.handler()?.clone();
        let decision = self.run(|store| handler.call_upgrade(store, request))?;
        Ok(match decision {
            Ok(Acceptance {
                session,
                headers,
                subprotocol,
            }) => Decision::Accept {
                session: Session {
                    session,
                    caller: None,
                },
                headers,
                subprotocol,
            },
            Err(rejection) => Decision::Reject(rejection),
        })
    }

    /// Creates the caller of an accepted session.
    pub(crate) fn open(
        &mut self,
        session: &mut Session,
        connection: Accepted,
    ) -> wasmtime::Result<()> {
        let caller = self.store.data_mut().table.push(CallerState {
            id: format!("{:x}", connection.number),
            secure: connection.secure,
            subprotocol: connection.subprotocol,
            attributes: HashMap::new(),
            outbox: Vec::new(),
            queued: 0,
            closing: false,
            number: connection.number,
            inbox: None,
            new_inbox: None,
            subscriptions: Default::default(),
            timers: HashMap::new(),
        })?;
        session.caller = Some(caller);
        Ok(())
    }

    /// When the session's next timer is due, if it has one.
    pub(crate) fn next_timer(&mut self, session: &Session) -> Option<tokio::time::Instant> {
        let caller = session.caller.as_ref()?;
        self.store.data_mut().caller(caller).ok()?.next_due()
    }

    /// Takes the timers due at `now`, rescheduling the repeating ones.
    pub(crate) fn due_timers(&mut self, session: &Session, now: tokio::time::Instant) -> Vec<u32> {
        let Some(caller) = session.caller.as_ref() else {
            return Vec::new();
        };
        let Ok(state) = self.store.data_mut().caller(caller) else {
            return Vec::new();
        };
        let mut due: Vec<u32> = state
            .timers
            .iter()
            .filter(|(_, timer)| timer.due <= now)
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        for id in &due {
            let timer = state.timers.get_mut(id).expect("listed above");
            match timer.period {
                // Skip missed periods rather than firing a burst.
                Some(period) => {
                    while timer.due <= now {
                        timer.due += period;
                    }
                }
                None => {
                    state.timers.remove(id);
                }
            }
        }
        due
    }

    /// Ends a connection in a shared instance: its subscriptions and timers, its
    /// caller, and its session (the guest's `end` frees it). `Err` is a trap.
    pub(crate) fn end(&mut self, session: Session) -> wasmtime::Result<()> {
        self.release(&session);
        if let Some(caller) = session.caller {
            self.store.data_mut().table.delete(caller)?;
        }
        self.arm_deadline();
        let handler = self.handler()?.clone();
        self.run(|store| handler.call_end(store, session.session))
    }

    /// Ends the connection's subscriptions and timers.
    pub(crate) fn release(&mut self, session: &Session) {
        let Some(caller) = session.caller.as_ref() else {
            return;
        };
        let topics = self.store.data().topics.clone();
        if let Ok(state) = self.store.data_mut().caller(caller) {
            for topic in state.subscriptions.drain() {
                topics.unsubscribe(&topic, state.number);
            }
            state.timers.clear();
        }
    }

    /// Delivers `event` to the session, and queues the message it returns (a message
    /// callback's reply) after what it wrote. The outer `Err` is a trap; the inner one
    /// the session's own error.
    pub(crate) fn dispatch(
        &mut self,
        session: &Session,
        event: Event<'_>,
    ) -> wasmtime::Result<Result<(), CallbackError>> {
        let caller = session
            .caller
            .as_ref()
            .ok_or_else(|| wasmtime::format_err!("session has no caller"))?;
        self.store.data_mut().current = Some(caller.rep());
        let result = self.run_callback(session.session, event);
        // A shared instance's next call may be another connection's, or `upgrade`.
        self.store.data_mut().current = None;
        result
    }

    /// [`dispatch`](Self::dispatch) once the caller is set.
    fn run_callback(
        &mut self,
        session: u32,
        event: Event<'_>,
    ) -> wasmtime::Result<Result<(), CallbackError>> {
        self.arm_deadline();
        let handler = self.handler()?.clone();
        let no_reply = |result: Result<(), CallbackError>| result.map(|()| None);
        let result: Result<Option<Message>, CallbackError> = self.run(|store| {
            Ok::<_, wasmtime::Error>(match event {
                Event::Open => no_reply(handler.call_on_open(store, session)?),
                Event::Text(data) => handler.call_on_text_message(store, session, data)?,
                Event::Binary(data) => handler.call_on_binary_message(store, session, data)?,
                Event::Ping(data) => no_reply(handler.call_on_ping(store, session, data)?),
                Event::Pong(data) => no_reply(handler.call_on_pong(store, session, data)?),
                Event::IdleTimeout => no_reply(handler.call_on_idle_timeout(store, session)?),
                Event::Close(code, reason) => {
                    no_reply(handler.call_on_close(store, session, code, reason)?)
                }
                Event::Error(message) => no_reply(handler.call_on_error(store, session, message)?),
                Event::Timer(id) => no_reply(handler.call_on_timer(store, session, id)?),
            })
        })?;
        let Ok(Some(reply)) = result else {
            return Ok(result.map(|_| ()));
        };
        // The reply goes after what the callback wrote, within the same limit; failing
        // that, the callback failed as a `write` with `?` would have made it.
        Ok(self
            .store
            .data_mut()
            .enqueue_message(reply)?
            .map_err(|error| {
                let why = match error {
                    CallerError::WriteBufferFull => "write buffer full",
                    // The only other refusal of `enqueue`.
                    _ => "connection closed",
                };
                CallbackError::Internal(why.to_owned())
            }))
    }

    /// What the last callback left for the connection, in one look at its caller:
    /// the frames it queued (swapped into `outbox`: the two vectors take turns, so
    /// queueing a frame allocates nothing), when its next timer is due, and the inbox
    /// its first subscription made.
    pub(crate) fn after_callback(
        &mut self,
        session: &Session,
        outbox: &mut Vec<Outgoing>,
    ) -> wasmtime::Result<Aftermath> {
        let Some(caller) = &session.caller else {
            return Ok(Aftermath::default());
        };
        let state = self.store.data_mut().caller(caller)?;
        state.queued = 0;
        // Whatever is left in `outbox` was queued by a callback after the connection
        // closed, and can no longer be sent.
        outbox.clear();
        std::mem::swap(&mut state.outbox, outbox);
        Ok(Aftermath {
            next_due: state.next_due(),
            new_inbox: state.new_inbox.take(),
        })
    }

    /// Records that a close frame was sent or received, so `is-open` turns false and
    /// further writes fail.
    pub(crate) fn mark_closing(&mut self, session: &Session) -> wasmtime::Result<()> {
        if let Some(caller) = &session.caller {
            self.store.data_mut().caller(caller)?.closing = true;
        }
        Ok(())
    }
}

/// Shared mode's instances of one service; connections are spread over them in turn.
struct Pool {
    slots: Vec<tokio::sync::Mutex<Option<Arc<SharedInstance>>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Pool {
    fn new(size: usize) -> Self {
        Self {
            slots: (0..size.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: Default::default(),
        }
    }

    /// The next slot's instance; a fresh one if it has none yet or its instance
    /// trapped.
    async fn get(&self, component: &ServiceComponent) -> wasmtime::Result<Arc<SharedInstance>> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = self.slots[index].lock().await;
        if let Some(shared) = slot.as_ref()
            && !shared.is_poisoned()
        {
            return Ok(shared.clone());
        }
        let shared = Arc::new(SharedInstance {
            instance: tokio::sync::Mutex::new(component.instantiate()?),
            poisoned: tokio::sync::watch::channel(false).0,
        });
        *slot = Some(shared.clone());
        Ok(shared)
    }
}

/// An instance serving many connections, one callback at a time.
pub(crate) struct SharedInstance {
    instance: tokio::sync::Mutex<Instance>,
    /// Set when a call trapped: the instance must not run again, and every connection
    /// it serves closes.
    poisoned: tokio::sync::watch::Sender<bool>,
}

impl SharedInstance {
    fn is_poisoned(&self) -> bool {
        *self.poisoned.borrow()
    }
}

/// A connection's hold on its instance.
pub(crate) enum InstanceHandle {
    /// Isolated mode: the connection's own instance (boxed: the handle lives in every
    /// connection's future, which shared mode keeps small).
    Own(Box<Instance>),
    /// Shared mode.
    Shared(Arc<SharedInstance>),
}

/// Exclusive use of an instance for a moment.
pub(crate) enum InstanceGuard<'a> {
    Own(&'a mut Instance),
    Shared(tokio::sync::MutexGuard<'a, Instance>),
}

impl std::ops::Deref for InstanceGuard<'_> {
    type Target = Instance;

    fn deref(&self) -> &Instance {
        match self {
            InstanceGuard::Own(instance) => instance,
            InstanceGuard::Shared(guard) => guard,
        }
    }
}

impl std::ops::DerefMut for InstanceGuard<'_> {
    fn deref_mut(&mut self) -> &mut Instance {
        match self {
            InstanceGuard::Own(instance) => instance,
            InstanceGuard::Shared(guard) => guard,
        }
    }
}

impl InstanceHandle {
    /// Waits for the instance (shared mode: other connections' callbacks).
    pub(crate) async fn lock(&mut self) -> InstanceGuard<'_> {
        match self {
            InstanceHandle::Own(instance) => InstanceGuard::Own(instance),
            InstanceHandle::Shared(shared) => InstanceGuard::Shared(shared.instance.lock().await),
        }
    }

    /// Whether the instance trapped (in a call for any of its connections).
    pub(crate) fn is_poisoned(&self) -> bool {
        match self {
            InstanceHandle::Own(instance) => instance.trapped,
            InstanceHandle::Shared(shared) => shared.is_poisoned(),
        }
    }

    /// Records that a call trapped: no guest code runs in the instance again.
    pub(crate) fn poison(&mut self) {
        match self {
            InstanceHandle::Own(instance) => instance.trapped = true,
            InstanceHandle::Shared(shared) => {
                shared.poisoned.send_replace(true);
            }
        }
    }

    /// Resolves when a call for another connection poisons the shared instance;
    /// `None` in isolated mode, where no other connection can.
    pub(crate) fn poisoned(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let InstanceHandle::Shared(shared) = self else {
            return None;
        };
        let mut watch = shared.poisoned.subscribe();
        Some(async move {
            let _ = watch.wait_for(|poisoned| *poisoned).await;
        })
    }

    /// Ends the connection's part: releases its subscriptions and timers; in shared
    /// mode also its caller and session (unless the instance trapped).
    pub(crate) async fn end(&mut self, session: Session) {
        match self {
            InstanceHandle::Own(instance) => instance.release(&session),
            InstanceHandle::Shared(shared) => {
                let mut instance = shared.instance.lock().await;
                if shared.is_poisoned() {
                    instance.release(&session);
                    return;
                }
                if let Err(trap) = instance.end(session) {
                    tracing::warn!("{}", describe_trap(&trap));
                    shared.poisoned.send_replace(true);
                }
            }
        }
    }
}

/// Whether a guest call failed for running past its deadline.
pub(crate) fn is_deadline(error: &wasmtime::Error) -> bool {
    matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt))
}

/// A short description of why a guest call failed, for logs.
pub(crate) fn describe_trap(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "callback exceeded its CPU deadline".to_owned(),
        Some(trap) => format!("guest trapped: {trap}"),
        None => format!("guest failed: {error:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sendable_close_codes() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1014, 3000, 4999,
        ] {
            assert!(is_sendable_close_code(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert!(!is_sendable_close_code(code), "{code}");
        }
    }

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(100); // 200 bytes
        let cut = truncate_reason(&long);
        assert_eq!(cut.len(), 122);
        assert!(long.starts_with(cut));
    }

    #[test]
    fn each_event_has_its_callback_flag() {
        let events = [
            Event::Open,
            Event::Text(""),
            Event::Binary(&[]),
            Event::Ping(&[]),
            Event::Pong(&[]),
            Event::IdleTimeout,
            Event::Close(1000, ""),
            Event::Error(""),
            Event::Timer(0),
        ];
        let all = events
            .iter()
            .fold(Callbacks::empty(), |all, event| all | event.callback());
        assert_eq!(all, Callbacks::all());
    }
}
