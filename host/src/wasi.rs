//! WASI for guests called synchronously on tokio's worker threads.
//!
//! Guest calls are plain (not async) calls: no fiber to create and switch to per
//! callback, and no fiber stack per store (decision 4). A store can be called that way
//! only if every function it imports is synchronous, and wasmtime-wasi's synchronous
//! bindings run their blocking operations with `Handle::block_on`, which panics on a
//! worker thread. So:
//!
//! - `wasi:io/streams` and `wasi:io/poll` are bound here. Each operation is polled
//!   once on the spot; what a guest writes to stdout and stderr (and any pollable that
//!   is ready) completes then. Anything else (a timer a guest sleeps on) blocks the
//!   thread after handing the worker's other tasks to another thread
//!   (`block_in_place`).
//! - `wasi:filesystem/types` (only reachable with `grants.dirs`) is wasmtime-wasi's
//!   synchronous binding; every call into a guest granted directories runs inside
//!   `block_in_place` ([`blocking`]), where `Handle::block_on` is allowed.
//! - Sockets are wasmtime-wasi's synchronous bindings too, but a guest never gets a
//!   socket (`allow_tcp(false)`, `allow_udp(false)`), so none of their blocking
//!   operations can be reached.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tokio::runtime::{Handle, RuntimeFlavor};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView as _};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::io::{poll as async_poll, streams as async_streams};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets, sync};
use wasmtime_wasi::p2::{DynPollable, StreamError, StreamResult};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView as _};

type InputStream = streams::InputStream;
type OutputStream = streams::OutputStream;

/// Adds every WASI 0.2 interface, all synchronous, to `linker`.
pub(crate) fn add_to_linker<T: WasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    let l = linker;
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    random::random::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    sync::filesystem::types::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    sockets::tcp_create_socket::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sockets::instance_network::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sockets::network::add_to_linker::<T, WasiSockets>(l, &Default::default(), T::sockets)?;
    sockets::ip_name_lookup::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sync::sockets::tcp::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sync::sockets::udp::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    sync::sockets::udp_create_socket::add_to_linker::<T, WasiSockets>(l, T::sockets)?;
    wasmtime_wasi::p2::bindings::io::error::add_to_linker::<T, HasIo>(l, |t| Io(t.ctx().table))?;
    poll::add_to_linker::<T, HasIo>(l, |t| Io(t.ctx().table))?;
    streams::add_to_linker::<T, HasIo>(l, |t| Io(t.ctx().table))?;
    Ok(())
}

/// Runs `future` to its end on this thread: polled once first (stdout, stderr and
/// ready pollables end there); if it is not done, the thread blocks on it, its
/// worker's other tasks handed to another thread.
fn finish<F: Future>(future: F) -> wasmtime::Result<F::Output> {
    let mut future = pin!(future);
    if let Poll::Ready(output) = future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        return Ok(output);
    }
    if !on_multi_thread_runtime() {
        return Err(wasmtime::format_err!(
            "a guest waited for I/O, which needs tokio's multi-thread runtime"
        ));
    }
    Ok(tokio::task::block_in_place(|| {
        Handle::current().block_on(future)
    }))
}

/// [`finish`], for stream operations.
fn finish_stream<T>(future: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    finish(future).map_err(StreamError::Trap)?
}

/// Runs `call`, which may block on tokio (`Handle::block_on`), where that is allowed:
/// inside `block_in_place`, which first hands the worker's other tasks to another
/// thread. Calls into a guest granted directories go through here.
pub(crate) fn blocking<R>(call: impl FnOnce() -> R) -> R {
    if on_multi_thread_runtime() {
        tokio::task::block_in_place(call)
    } else {
        call()
    }
}

/// Hands the worker's other tasks to another thread, so that a guest that has been
/// running for a while on this one holds up nobody else. The epoch callback calls it
/// once a callback has run for more than a tick.
pub(crate) fn hand_off_worker() {
    if on_multi_thread_runtime() {
        // `block_in_place` moves the worker to a fresh thread and takes it back at
        // the end if that thread has not started yet: give it time to (the epoch
        // callback tries again on later ticks if it did not).
        tokio::task::block_in_place(|| std::thread::sleep(HAND_OFF_WAIT));
    }
}

/// How long [`hand_off_worker`] gives the new worker thread to start.
const HAND_OFF_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// Whether this thread runs tokio's multi-thread runtime (where `block_in_place` works).
pub(crate) fn on_multi_thread_runtime() -> bool {
    matches!(
        Handle::try_current().map(|handle| handle.runtime_flavor()),
        Ok(RuntimeFlavor::MultiThread)
    )
}

/// A store's resource table, seen by the `wasi:io` bindings.
struct Io<'a>(&'a mut ResourceTable);

/// The [`HasData`] of the `wasi:io` bindings.
struct HasIo;

impl HasData for HasIo {
    type Data<'a> = Io<'a>;
}

impl wasmtime_wasi::p2::bindings::io::error::Host for Io<'_> {}

impl wasmtime_wasi::p2::bindings::io::error::HostError for Io<'_> {
    fn to_debug_string(
        &mut self,
        error: Resource<wasmtime_wasi::p2::bindings::io::error::Error>,
    ) -> wasmtime::Result<String> {
        wasmtime_wasi::p2::bindings::io::error::HostError::to_debug_string(self.0, error)
    }

    fn drop(
        &mut self,
        error: Resource<wasmtime_wasi::p2::bindings::io::error::Error>,
    ) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::bindings::io::error::HostError::drop(self.0, error)
    }
}

impl poll::Host for Io<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        finish(async_poll::Host::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for Io<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        finish(async_poll::HostPollable::ready(self.0, pollable))?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        finish(async_poll::HostPollable::block(self.0, pollable))?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

impl streams::Host for Io<'_> {
    fn convert_stream_error(
        &mut self,
        error: StreamError,
    ) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.0, error)
    }
}

impl streams::HostOutputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<OutputStream>) -> wasmtime::Result<()> {
        finish(async_streams::HostOutputStream::drop(self.0, stream))?
    }

    fn check_write(&mut self, stream: Resource<OutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<OutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<OutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        finish_stream(async_streams::HostOutputStream::blocking_write_and_flush(
            self.0, stream, bytes,
        ))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<OutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        finish_stream(
            async_streams::HostOutputStream::blocking_write_zeroes_and_flush(self.0, stream, len),
        )
    }

    fn subscribe(
        &mut self,
        stream: Resource<OutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<OutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<OutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<OutputStream>) -> StreamResult<()> {
        finish_stream(async_streams::HostOutputStream::blocking_flush(
            self.0, stream,
        ))
    }

    fn splice(
        &mut self,
        dst: Resource<OutputStream>,
        src: Resource<InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<OutputStream>,
        src: Resource<InputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        finish_stream(async_streams::HostOutputStream::blocking_splice(
            self.0, dst, src, len,
        ))
    }
}

impl streams::HostInputStream for Io<'_> {
    fn drop(&mut self, stream: Resource<InputStream>) -> wasmtime::Result<()> {
        finish(async_streams::HostInputStream::drop(self.0, stream))?
    }

    fn read(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.0, stream, len)
    }

    fn blocking_read(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<Vec<u8>> {
        finish_stream(async_streams::HostInputStream::blocking_read(
            self.0, stream, len,
        ))
    }

    fn skip(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<InputStream>, len: u64) -> StreamResult<u64> {
        finish_stream(async_streams::HostInputStream::blocking_skip(
            self.0, stream, len,
        ))
    }

    fn subscribe(
        &mut self,
        stream: Resource<InputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.0, stream)
    }
}
