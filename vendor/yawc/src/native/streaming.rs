//! Low-level streaming WebSocket layer for manual fragment control.
//!
//! This module provides the [`Streaming`] type, which gives users direct control over
//! WebSocket frame fragmentation without automatic reassembly or fragmentation.
//!
//! # When to Use Streaming
//!
//! Use `Streaming` when you need:
//! - **Manual fragment control**: Send and receive individual fragments without automatic reassembly
//! - **Memory-efficient streaming**: Process large messages incrementally without buffering
//! - **Custom fragmentation logic**: Implement application-specific fragmentation strategies
//! - **Real-time processing**: Handle fragments as they arrive for low-latency applications
//!
//! # Comparison with WebSocket
//!
//! | Feature | `WebSocket` | `Streaming` |
//! |---------|------------|------------|
//! | Fragment reassembly | Automatic | Manual |
//! | Auto-fragmentation | Optional | Manual |
//! | Compression | Yes | Yes |
//! | Memory usage | Higher | Lower |
//! | Control | Limited | Full |
//!
//! # Example
//!
//! ```rust,no_run
//! use yawc::{WebSocket, Frame, OpCode};
//! use futures::SinkExt;
//!
//! # async fn example() -> yawc::Result<()> {
//! // Convert WebSocket to Streaming for manual fragment control
//! let ws = WebSocket::connect("ws://example.com".parse()?).await?;
//! let mut streaming = ws.into_streaming();
//!
//! // Send a message as multiple fragments manually
//! streaming.send(Frame::text("Hello").with_fin(false)).await?;
//! streaming.send(Frame::continuation(" ").with_fin(false)).await?;
//! streaming.send(Frame::continuation("World!")).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Safety
//!
//! When using `Streaming`, you are responsible for:
//! - **Fragment ordering**: Continuation frames must follow a non-FIN data frame
//! - **OpCode rules**: Only the first fragment carries the message opcode
//! - **Control frames**: Cannot be fragmented and can be sent between data fragments
//! - **Compression**: RSV1 bit is managed automatically based on compression state

use std::{
    collections::VecDeque,
    future::poll_fn,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use crate::{close::CloseCode, codec, Negotiation, OpCode, Result, Role};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, FramedParts};

/// The buffer size tokio-util starts `Framed` with, used when none is configured.
const DEFAULT_BUFFER_CAPACITY: usize = 8 * 1024;

/// Unmasked payloads from this size on are written from their own `Bytes` instead of
/// being copied into the write buffer.
const DIRECT_WRITE_MIN: usize = 2048;

/// Most chunks one vectored write takes.
const MAX_WRITE_CHUNKS: usize = 64;

use crate::{
    codec::Codec,
    compression::{Compressor, Decompressor},
    native::{ContextKind, WakeProxy},
    Frame, ReadHalf, WebSocketError, WriteHalf,
};

/// Low-level streaming WebSocket connection with manual fragment control.
///
/// `Streaming` provides direct access to WebSocket frames without automatic
/// fragmentation or reassembly. This allows for:
/// - Streaming large files directly from/to disk without loading them in memory
/// - Implementing custom fragmentation strategies
/// - Processing data incrementally as fragments arrive
/// - Fine-grained control over frame boundaries
///
/// # Conversion
///
/// You can convert a [`WebSocket`](super::WebSocket) into a [`Streaming`] connection:
///
/// ```rust,no_run
/// # use yawc::WebSocket;
/// # async fn example() -> yawc::Result<()> {
/// let ws = WebSocket::connect("ws://example.com".parse()?).await?;
/// let streaming = ws.into_streaming();
/// # Ok(())
/// # }
/// ```
///
/// # Fragmentation Protocol
///
/// When manually fragmenting messages:
/// 1. Send first fragment with desired OpCode (Text/Binary) and `FIN=false`
/// 2. Send continuation fragments with OpCode::Continuation and `FIN=false`
/// 3. Send final fragment with OpCode::Continuation and `FIN=true`
///
/// # Example: Streaming File Upload
///
/// ```rust,no_run
/// use yawc::{WebSocket, Frame, OpCode};
/// use futures::SinkExt;
/// use std::io::Read;
///
/// # async fn upload_file() -> yawc::Result<()> {
/// let ws = WebSocket::connect("ws://example.com/upload".parse()?).await?;
/// let mut streaming = ws.into_streaming();
///
/// let mut file = std::fs::File::open("large_file.bin")?;
/// let mut buffer = vec![0u8; 64 * 1024]; // 64 KiB chunks
/// let mut first = true;
///
/// loop {
///     let bytes_read = file.read(&mut buffer)?;
///     if bytes_read == 0 {
///         break;
///     }
///
///     let chunk = buffer[..bytes_read].to_vec();
///     let frame = if first {
///         first = false;
///         Frame::binary(chunk).with_fin(false)
///     } else {
///         Frame::continuation(chunk).with_fin(false)
///     };
///
///     streaming.send(frame).await?;
/// }
///
/// // Send final empty fragment to close the message
/// streaming.send(Frame::continuation(vec![])).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Compression Behavior
///
/// Unlike [`WebSocket`](super::WebSocket) which compresses complete messages,
/// `Streaming` performs **streaming compression**:
/// - Compression state is maintained across fragments
/// - RSV1 bit is automatically managed (set only on first fragment)
/// - Decompression happens per-fragment with context preservation
///
/// This allows compressed data to be processed incrementally without waiting
/// for the complete message.
pub struct Streaming<S> {
    stream: Framed<S, Codec>,
    // Reading state
    read_half: ReadHalf,
    // Writing state
    write_half: WriteHalf,
    // waker proxy
    wake_proxy: Arc<WakeProxy>,
    // frames we must send (control..)
    obligated_sends: VecDeque<Frame>,
    // flag to indicate the writer to flush sends
    flush_sends: bool,
    // a close frame has been sent: a received close is not answered again
    close_sent: bool,
    // pings are answered by the application, not here
    manual_pong: bool,
    // compressor
    deflate: Option<Box<Compressor>>,
    // decompressor
    inflate: Option<Box<Decompressor>>,
    max_payload_read: usize,
    // messages sent as one frame below this size are not compressed
    compression_threshold: usize,
    // size the read buffer returns to after a larger frame
    read_buffer_capacity: usize,
    // size the write buffer returns to after it grew past the backpressure boundary
    write_buffer_capacity: usize,
    // the write buffer grew past its usual size and is replaced once flushed
    write_buffer_grown: bool,
    // free both buffers while the connection waits
    release_idle_buffers: bool,
    // frames go out unmasked (server role): a large payload is written as it is
    unmasked: bool,
    // written ahead of the write buffer, in order: what the buffer held up to a large
    // payload's head (split off), and that payload, uncopied
    chunks: VecDeque<Bytes>,
}

impl<S> Streaming<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(role: Role, stream: S, read_buf: Bytes, negotiated: &Negotiation) -> Self {
        let decoder = codec::Decoder::new(role, negotiated.max_payload_read);
        let encoder = codec::Encoder::new(role);
        let codec = Codec::from((decoder, encoder));

        let mut parts = FramedParts::new(stream, codec);
        parts.read_buf = read_buf.into();

        // `from_parts` marks leftover handshake bytes as readable, which
        // `Framed::with_capacity` cannot, but it also raises both buffers to 8 KiB.
        // Swap in buffers of the configured size afterwards.
        let mut framed = Framed::from_parts(parts);
        // With idle buffers released a connection starts without any (unless the
        // upgrade left bytes to read): its first read or write takes one of the
        // configured size (see `spare`). The 8 KiB ones `from_parts` made are freed,
        // not kept: the spare list is for buffers of the configured sizes.
        let release = negotiated.release_idle_buffers;
        if release && framed.read_buffer().is_empty() {
            *framed.read_buffer_mut() = BytesMut::new();
        } else if let Some(capacity) = negotiated.read_buffer_capacity {
            set_capacity(framed.read_buffer_mut(), capacity);
        }
        if release {
            *framed.write_buffer_mut() = BytesMut::new();
        } else if let Some(capacity) = negotiated.write_buffer_capacity {
            set_capacity(framed.write_buffer_mut(), capacity);
        }
        if let Some(boundary) = negotiated.max_backpressure_write_boundary {
            framed.set_backpressure_boundary(boundary);
        }

        Self {
            stream: framed,
            read_half: ReadHalf::new(),
            write_half: WriteHalf::new(),
            wake_proxy: Arc::new(WakeProxy::default()),
            obligated_sends: VecDeque::new(),
            flush_sends: false,
            close_sent: false,
            manual_pong: negotiated.manual_pong,
            deflate: negotiated.compressor().map(Box::new),
            inflate: negotiated.decompressor().map(Box::new),
            max_payload_read: negotiated.max_payload_read,
            compression_threshold: negotiated.compression_threshold,
            read_buffer_capacity: negotiated
                .read_buffer_capacity
                .unwrap_or(DEFAULT_BUFFER_CAPACITY),
            write_buffer_capacity: negotiated
                .write_buffer_capacity
                .unwrap_or(DEFAULT_BUFFER_CAPACITY),
            write_buffer_grown: false,
            release_idle_buffers: negotiated.release_idle_buffers,
            unmasked: role == Role::Server,
            chunks: VecDeque::new(),
        }
    }

    /// Asynchronously retrieves the next frame from the WebSocket stream.
    pub async fn next_frame(&mut self) -> Result<Frame> {
        poll_fn(|cx| self.poll_next_frame(cx)).await
    }

    /// Splits the `Streaming` connection into its low-level components for advanced usage.
    ///
    /// This method provides access to the underlying framed stream and read/write halves,
    /// allowing for direct manipulation of the WebSocket protocol layer.
    ///
    /// # Safety
    ///
    /// This function is unsafe because it splits ownership of shared state. The caller
    /// must ensure that:
    /// - Only one component performs reads at a time
    /// - Only one component performs writes at a time
    /// - Protocol invariants are maintained (control frames, fragment ordering, etc.)
    ///
    /// # Example
    ///
    /// See [`examples/streaming.rs`](https://github.com/infinitefield/yawc/blob/master/examples/streaming.rs)
    /// for a complete example of using `split_stream()` for low-level frame processing.
    pub unsafe fn split_stream(mut self) -> (Framed<S, Codec>, ReadHalf, WriteHalf) {
        // The halves write through the buffer alone: chunks not written yet go back
        // into it, ahead of what it holds.
        if !self.chunks.is_empty() {
            let buffer = self.stream.write_buffer_mut();
            let mut joined = BytesMut::with_capacity(queued(&self.chunks) + buffer.len());
            for chunk in self.chunks.drain(..) {
                joined.extend_from_slice(&chunk);
            }
            joined.extend_from_slice(buffer);
            *buffer = joined;
        }
        (self.stream, self.read_half, self.write_half)
    }

    /// Polls for the next frame in the WebSocket stream.
    ///
    /// This method returns individual frames without reassembling fragments. Applications
    /// using this method must handle fragmentation manually by checking the `FIN` flag
    /// and `OpCode` of each frame.
    ///
    /// # Returns
    ///
    /// - `Poll::Ready(Ok(frame))` - A complete frame is available
    /// - `Poll::Ready(Err(e))` - A protocol error occurred
    /// - `Poll::Pending` - No frame is available yet
    ///
    /// # Fragment Handling
    ///
    /// Frames may arrive as:
    /// - Complete messages: `OpCode::{Text,Binary}` with `FIN=true`
    /// - First fragment: `OpCode::{Text,Binary}` with `FIN=false`
    /// - Middle fragments: `OpCode::Continuation` with `FIN=false`
    /// - Final fragment: `OpCode::Continuation` with `FIN=true`
    pub fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame>> {
        self.poll_next_frame_with_limit(cx, self.max_payload_read)
    }

    pub(crate) fn poll_next_frame_with_limit(
        &mut self,
        cx: &mut Context<'_>,
        max_read_buffer: usize,
    ) -> Poll<Result<Frame>> {
        if self.release_idle_buffers && self.stream.read_buffer().capacity() == 0 {
            *self.stream.read_buffer_mut() = super::spare::take(self.read_buffer_capacity);
        }
        let res = if self.stream.read_buffer().is_empty() {
            self.wake_proxy.set_waker(ContextKind::Read, cx.waker());
            self.wake_proxy
                .with_context(|cx| self.read_half.poll_frame(&mut self.stream, cx))
        } else {
            self.wake_proxy
                .poll_with_context(ContextKind::Read, cx, |cx| {
                    self.read_half.poll_frame(&mut self.stream, cx)
                })
        };
        let res = res.map(|res| {
            res.and_then(|frame| {
                self.release_read_buffer(frame.payload.len());
                self.on_frame(frame, max_read_buffer)
            })
        });
        match res {
            Poll::Ready(Ok(frame)) => Poll::Ready(Ok(frame)),
            Poll::Ready(Err(WebSocketError::ConnectionClosed)) => {
                ready!(self.poll_flush_obligated(ContextKind::Read, cx))?;
                Poll::Ready(Err(WebSocketError::ConnectionClosed))
            }
            Poll::Ready(Err(err)) => {
                self.fail(&err);
                Poll::Ready(Err(err))
            }
            Poll::Pending => {
                ready!(self.poll_flush_obligated(ContextKind::Read, cx))?;
                if self.release_idle_buffers && self.stream.read_buffer().is_empty() {
                    super::spare::give(std::mem::take(self.stream.read_buffer_mut()));
                }
                Poll::Pending
            }
        }
    }

    /// Gives back the memory a frame larger than the read buffer made it grow to.
    ///
    /// The frame's payload shares the buffer's allocation, so the buffer keeps all of
    /// it until replaced. Bytes of the next frame already read are kept, unless there
    /// are more than fit, in which case the next frame shrinks it instead.
    fn release_read_buffer(&mut self, frame_len: usize) {
        let capacity = self.read_buffer_capacity;
        let buffer = self.stream.read_buffer_mut();
        if frame_len > capacity && buffer.len() <= capacity {
            set_capacity(buffer, capacity);
        }
    }

    /// Gives back the memory the write buffer grew to, once it has been written out.
    fn release_write_buffer(&mut self) {
        if self.release_idle_buffers && self.stream.write_buffer().is_empty() {
            super::spare::give(std::mem::take(self.stream.write_buffer_mut()));
            self.write_buffer_grown = false;
            if self.chunks.is_empty() && self.chunks.capacity() > 0 {
                self.chunks = VecDeque::new();
            }
        } else if self.write_buffer_grown && self.stream.write_buffer().is_empty() {
            set_capacity(self.stream.write_buffer_mut(), self.write_buffer_capacity);
            self.write_buffer_grown = false;
        }
    }

    fn on_frame(&mut self, mut frame: Frame, max_read_buffer: usize) -> Result<Frame> {
        #[cfg(test)]
        println!(
            "<<Compression<< OpCode={:?} Fin={} Payload={}",
            frame.opcode,
            frame.fin,
            frame.payload.len()
        );

        // Handle protocol control frames first
        match frame.opcode {
            OpCode::Ping => {
                self.on_ping(&frame);
                return Ok(frame);
            }
            OpCode::Close => {
                self.on_close(&frame)?;
                return Ok(frame);
            }
            OpCode::Pong => return Ok(frame),
            _ => {}
        }

        let max_output_size = if !frame.is_fin() || frame.opcode == OpCode::Continuation {
            self.max_payload_read.min(max_read_buffer)
        } else {
            self.max_payload_read
        };

        if frame.is_compressed {
            let inflate = self
                .inflate
                .as_mut()
                .ok_or(WebSocketError::CompressionNotSupported)?;
            frame.payload = inflate.decompress(&frame.payload, frame.is_fin(), max_output_size)?;
            frame.is_compressed = false;
        }

        if frame.payload.len() >= max_output_size {
            return Err(WebSocketError::FrameTooLarge);
        }

        Ok(frame)
    }

    /// Fails the connection after `err`: queues a close frame with the code that
    /// fits the error and stops reading. Does nothing once a close frame was sent.
    pub(crate) fn fail(&mut self, err: &WebSocketError) {
        let code = match err {
            WebSocketError::FrameTooLarge => CloseCode::Size,
            WebSocketError::InvalidUTF8 => CloseCode::Invalid,
            // A reserved opcode is a protocol error (RFC 6455 §5.2, §7.4.1), not
            // "unsupported data" (1003, which is about message content).
            WebSocketError::InvalidOpCode(_)
            | WebSocketError::ReservedBitsNotZero
            | WebSocketError::ControlFrameFragmented
            | WebSocketError::PingFrameTooLarge
            | WebSocketError::InvalidFragment
            | WebSocketError::InvalidCloseFrame
            | WebSocketError::InvalidCloseCode
            | WebSocketError::FragmentTimeout
            | WebSocketError::InvalidContinuationFrame
            | WebSocketError::CompressionNotSupported => CloseCode::Protocol,
            _ => CloseCode::Error,
        };
        self.emit_close(Frame::close(code, err.to_string()));
    }

    fn on_ping(&mut self, frame: &Frame) {
        if !self.manual_pong {
            self.obligated_sends
                .push_back(Frame::pong(frame.payload.clone()));
        }
    }

    fn on_close(&mut self, frame: &Frame) -> Result<()> {
        match frame.payload.len() {
            0 => {}
            1 => return Err(WebSocketError::InvalidCloseFrame),
            _ => {
                let code = frame.close_code().expect("close code");
                let _ = frame.close_reason()?;

                if !code.is_allowed() {
                    return Err(WebSocketError::InvalidCloseCode);
                }
            }
        }

        let frame = Frame::close_raw(frame.payload.clone());
        self.emit_close(frame);

        Ok(())
    }

    fn emit_close(&mut self, frame: Frame) {
        // An endpoint sends at most one close frame (RFC 6455 §5.5.1).
        if !self.close_sent {
            self.close_sent = true;
            self.obligated_sends.push_back(frame);
        }
        self.read_half.is_closed = true;
    }

    fn poll_flush_obligated(
        &mut self,
        kind: ContextKind,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        if self.obligated_sends.is_empty() && !self.flush_sends {
            return Poll::Ready(Ok(()));
        }
        self.wake_proxy.poll_with_context(kind, cx, |cx| {
            // The buffer is written (or flushed by a full `Framed`) only after the
            // chunks ahead of it.
            ready!(write_chunks(&mut self.stream, &mut self.chunks, cx))?;
            while !self.obligated_sends.is_empty() {
                ready!(self.write_half.poll_ready(&mut self.stream, cx))?;

                let next = self.obligated_sends.pop_front().expect("obligated send");
                self.write_half.start_send(&mut self.stream, next)?;
                self.flush_sends = true;
            }

            if self.flush_sends {
                ready!(self.write_half.poll_flush(&mut self.stream, cx))?;
                self.flush_sends = false;
            }

            Poll::Ready(Ok(()))
        })
    }
}

impl<S> futures::Stream for Streaming<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Frame;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match ready!(this.poll_next_frame(cx)) {
            Ok(ok) => Poll::Ready(Some(ok)),
            Err(_) => Poll::Ready(None),
        }
    }
}

impl<S> futures::Sink<Frame> for Streaming<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = WebSocketError;

    fn poll_ready(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.obligated_sends.is_empty()
            && !this.flush_sends
            && queued(&this.chunks) + this.stream.write_buffer().len()
                < this.stream.backpressure_boundary()
        {
            // Framed can accept another frame without polling the transport.
            return this.write_half.poll_ready(&mut this.stream, cx);
        }
        this.wake_proxy.set_waker(ContextKind::Write, cx.waker());
        ready!(this
            .wake_proxy
            .with_context(|cx| write_chunks(&mut this.stream, &mut this.chunks, cx)))?;
        ready!(this.poll_flush_obligated(ContextKind::Write, cx))?;
        this.wake_proxy
            .with_context(|cx| this.write_half.poll_ready(&mut this.stream, cx))
    }

    fn start_send(self: Pin<&mut Self>, mut item: Frame) -> std::result::Result<(), Self::Error> {
        let this = self.get_mut();

        if item.opcode == OpCode::Close {
            // Only the first close frame goes out (RFC 6455 §5.5.1).
            if this.close_sent {
                return Ok(());
            }
            this.close_sent = true;
        }

        #[cfg(test)]
        println!(
            ">>Compression>> OpCode={:?} Fin={} Payload={}",
            item.opcode,
            item.fin,
            item.payload.len()
        );

        // A whole message in one frame may skip compression. A fragmented message
        // cannot, since RSV1 on its first frame covers every fragment.
        let small_message = item.opcode != OpCode::Continuation
            && item.is_fin()
            && item.payload.len() < this.compression_threshold;
        let should_compress = !item.opcode.is_control() && !small_message;
        if should_compress {
            if let Some(deflate) = this.deflate.as_mut() {
                let output = deflate.compress(&item.payload, item.is_fin())?;
                // Set the RSV1 bit only when we are not streaming
                item.is_compressed = !this.write_half.streaming;
                item.payload = output;
            }
        }

        if this.release_idle_buffers && this.stream.write_buffer().capacity() == 0 {
            *this.stream.write_buffer_mut() = super::spare::take(this.write_buffer_capacity);
        }
        // (A transport without vectored writes would take each chunk in a write of
        // its own: more system calls than the copy saves.)
        if this.unmasked
            && !item.opcode.is_control()
            && item.mask.is_none()
            && item.payload.len() >= DIRECT_WRITE_MIN
            && this.stream.get_ref().is_write_vectored()
        {
            // The buffer, ending with this frame's head, becomes a chunk, and the payload
            // the next one, uncopied (patch 9). The write half's bookkeeping for a
            // data frame:
            this.write_half.streaming = !item.is_fin();
            let buffer = this.stream.write_buffer_mut();
            item.write_head(buffer);
            this.chunks.push_back(buffer.split().freeze());
            this.chunks.push_back(item.payload);
            return Ok(());
        }
        this.write_half.start_send(&mut this.stream, item)?;

        // Frames up to the backpressure boundary collect in the buffer between
        // flushes, so only growth past both limits is given back.
        let usual = this
            .write_buffer_capacity
            .max(this.stream.backpressure_boundary());
        if this.stream.write_buffer().len() > usual {
            this.write_buffer_grown = true;
        }
        Ok(())
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        let this = self.get_mut();
        this.wake_proxy.set_waker(ContextKind::Write, cx.waker());
        ready!(this
            .wake_proxy
            .with_context(|cx| write_chunks(&mut this.stream, &mut this.chunks, cx)))?;
        ready!(this
            .wake_proxy
            .with_context(|cx| this.write_half.poll_flush(&mut this.stream, cx)))?;
        this.release_write_buffer();
        Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        let this = self.get_mut();
        this.wake_proxy.set_waker(ContextKind::Write, cx.waker());
        ready!(this
            .wake_proxy
            .with_context(|cx| write_chunks(&mut this.stream, &mut this.chunks, cx)))?;
        this.wake_proxy
            .with_context(|cx| this.write_half.poll_close(&mut this.stream, cx))
    }
}

/// Bytes waiting in `chunks`.
fn queued(chunks: &VecDeque<Bytes>) -> usize {
    chunks.iter().map(Bytes::len).sum()
}

/// Writes `chunks` and then the write buffer, with vectored writes, until all are out.
fn write_chunks<S: AsyncWrite + Unpin>(
    stream: &mut Framed<S, Codec>,
    chunks: &mut VecDeque<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<()>> {
    use bytes::Buf;

    if chunks.is_empty() {
        return Poll::Ready(Ok(()));
    }
    // Out of the `Framed` while written: the transport and the buffer are borrowed at
    // once. It goes back, emptied as far as written, whatever happens.
    let mut buffer = std::mem::take(stream.write_buffer_mut());
    let result = loop {
        if chunks.is_empty() && buffer.is_empty() {
            break Poll::Ready(Ok(()));
        }
        let mut slices = [std::io::IoSlice::new(&[]); MAX_WRITE_CHUNKS];
        let mut count = 0;
        for chunk in chunks.iter().take(MAX_WRITE_CHUNKS) {
            slices[count] = std::io::IoSlice::new(chunk);
            count += 1;
        }
        // The buffer only behind every chunk.
        if chunks.len() < MAX_WRITE_CHUNKS {
            slices[count] = std::io::IoSlice::new(&buffer);
            count += 1;
        }
        match Pin::new(stream.get_mut()).poll_write_vectored(cx, &slices[..count]) {
            Poll::Pending => break Poll::Pending,
            Poll::Ready(Err(error)) => break Poll::Ready(Err(error.into())),
            Poll::Ready(Ok(0)) => {
                break Poll::Ready(Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into()))
            }
            Poll::Ready(Ok(mut written)) => {
                while written > 0 {
                    match chunks.front_mut() {
                        Some(chunk) => {
                            let taken = written.min(chunk.len());
                            chunk.advance(taken);
                            written -= taken;
                            if chunk.is_empty() {
                                chunks.pop_front();
                            }
                        }
                        None => {
                            buffer.advance(written);
                            written = 0;
                        }
                    }
                }
            }
        }
    };
    *stream.write_buffer_mut() = buffer;
    result
}

/// Replaces `buffer` with one of `capacity` bytes, keeping its contents.
///
/// The new buffer is never smaller than the bytes already in it.
fn set_capacity(buffer: &mut BytesMut, capacity: usize) {
    let mut resized = BytesMut::with_capacity(capacity.max(buffer.len()));
    resized.extend_from_slice(buffer);
    *buffer = resized;
}

#[cfg(test)]
mod wake_tests {
    use super::*;
    use crate::Options;
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        task::{Wake, Waker},
    };
    use tokio::io::{duplex, AsyncWriteExt};

    #[derive(Default)]
    struct WakeCount(AtomicUsize);

    impl Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn two_buffered_header_bytes_register_a_waker_when_payload_is_missing() {
        let negotiated = Negotiation::new(None, &Options::default(), Role::Client).unwrap();
        let (io, mut peer) = duplex(16);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03"),
            &negotiated,
        );
        let count = Arc::new(WakeCount::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);

        assert_eq!(stream.stream.read_buffer().len(), 2);
        assert!(stream.poll_next_frame(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::Relaxed), 0);

        peer.write_all(b"abc").await.unwrap();
        assert!(count.0.load(Ordering::Relaxed) > 0);
        let Poll::Ready(Ok(frame)) = stream.poll_next_frame(&mut cx) else {
            panic!("the completed frame must be ready after its payload arrives");
        };
        assert_eq!(frame.opcode(), OpCode::Binary);
        assert_eq!(frame.payload().as_ref(), b"abc");
    }
}

#[cfg(test)]
mod capacity_tests {
    use super::*;
    use crate::Options;
    use tokio::io::duplex;

    #[tokio::test]
    async fn reservation_preserves_bytes_received_with_the_upgrade() {
        let options = Options::default().with_read_buffer_capacity(64 * 1024);
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert!(stream.stream.read_buffer().capacity() >= 64 * 1024);
        assert_eq!(
            stream.next_frame().await.unwrap().payload().as_ref(),
            b"abc"
        );
    }

    #[tokio::test]
    async fn small_capacities_are_exact_and_keep_upgrade_bytes() {
        let options = Options::default()
            .with_read_buffer_capacity(512)
            .with_write_buffer_capacity(256);
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert_eq!(stream.stream.read_buffer().capacity(), 512);
        assert_eq!(stream.stream.write_buffer().capacity(), 256);
        // The flush threshold stays at tokio-util's default, not the buffer size.
        let default = Negotiation::new(None, &Options::default(), Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let default = Streaming::new(Role::Client, io, Bytes::new(), &default);
        assert_eq!(
            stream.stream.backpressure_boundary(),
            default.stream.backpressure_boundary()
        );
        assert_eq!(
            stream.next_frame().await.unwrap().payload().as_ref(),
            b"abc"
        );
    }

    #[tokio::test]
    async fn idle_buffers_are_released_and_come_back_for_the_next_read() {
        use futures::SinkExt;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let options = Options::default()
            .with_read_buffer_capacity(16 * 1024)
            .with_idle_buffers_released();
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, mut peer) = duplex(64 * 1024);
        let mut stream = Streaming::new(Role::Client, io, Bytes::new(), &negotiated);
        // A fresh connection holds no buffer until it reads or writes.
        assert_eq!(stream.stream.read_buffer().capacity(), 0);
        assert_eq!(stream.stream.write_buffer().capacity(), 0);

        // Nothing to read: the read finds nothing and frees the buffer.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(stream.poll_next_frame(&mut cx).is_pending());
        assert_eq!(stream.stream.read_buffer().capacity(), 0);

        // A partial frame is kept while the rest is awaited.
        peer.write_all(b"\x82\x03a").await.unwrap();
        assert!(stream.poll_next_frame(&mut cx).is_pending());
        // (less the frame header the decoder has consumed)
        assert!(stream.stream.read_buffer().capacity() >= 16 * 1024 - 16);
        peer.write_all(b"bc").await.unwrap();
        assert_eq!(
            stream.next_frame().await.unwrap().payload().as_ref(),
            b"abc"
        );

        // The write buffer is freed once flushed, and what was written arrives.
        stream.send(Frame::binary(&b"xyz"[..])).await.unwrap();
        assert_eq!(stream.stream.write_buffer().capacity(), 0);
        let mut head = [0u8; 2];
        peer.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 0x82);
        assert_eq!(head[1] & 0x7f, 3);
    }

    #[tokio::test]
    async fn idle_buffers_released_keep_upgrade_bytes() {
        let options = Options::default()
            .with_read_buffer_capacity(16 * 1024)
            .with_idle_buffers_released();
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert_eq!(stream.stream.read_buffer().capacity(), 16 * 1024);
        assert_eq!(stream.stream.write_buffer().capacity(), 0);
        assert_eq!(
            stream.next_frame().await.unwrap().payload().as_ref(),
            b"abc"
        );
    }

    #[tokio::test]
    async fn capacity_does_not_relax_the_payload_limit() {
        let options = Options::default()
            .with_read_buffer_capacity(64 * 1024)
            .with_max_payload_read(2);
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert!(matches!(
            stream.next_frame().await,
            Err(WebSocketError::FrameTooLarge)
        ));
    }

    #[tokio::test]
    async fn large_payloads_are_written_from_their_own_bytes_in_order() {
        use futures::SinkExt;

        let server_options = Negotiation::new(None, &Options::default(), Role::Server).unwrap();
        let client_options = Negotiation::new(None, &Options::default(), Role::Client).unwrap();
        // A small pipe: writes are partial and the writer waits for the reader.
        let (server_io, client_io) = duplex(100);
        let mut server = Streaming::new(Role::Server, server_io, Bytes::new(), &server_options);
        let mut client = Streaming::new(Role::Client, client_io, Bytes::new(), &client_options);

        let large: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let text = "é".repeat(2_000);
        let sending = async {
            // One frame queued (its payload not copied) and flushed; two fed, the
            // second behind a large payload.
            server.feed(Frame::binary(large.clone())).await.unwrap();
            // Its head (10 bytes) and its payload, as they are, wait ahead of the buffer.
            assert_eq!(server.chunks.len(), 2);
            assert_eq!(queued(&server.chunks), 100_010);
            assert!(server.stream.write_buffer().is_empty());
            server.flush().await.unwrap();
            server.feed(Frame::text(text.clone())).await.unwrap();
            server.feed(Frame::binary(&b"small"[..])).await.unwrap();
            server.flush().await.unwrap();
            // Sent without `poll_ready` in between: both queue, in order.
            server.start_send_unpin(Frame::binary(large.clone())).unwrap();
            server.start_send_unpin(Frame::text(&b"after"[..])).unwrap();
            server.flush().await.unwrap();
        };
        let receiving = async {
            let mut frames = Vec::new();
            for _ in 0..5 {
                let frame = client.next_frame().await.unwrap();
                frames.push((frame.opcode, frame.payload.to_vec()));
            }
            frames
        };
        let ((), frames) = tokio::join!(sending, receiving);
        assert_eq!(
            frames,
            vec![
                (OpCode::Binary, large.clone()),
                (OpCode::Text, text.into_bytes()),
                (OpCode::Binary, b"small".to_vec()),
                (OpCode::Binary, large),
                (OpCode::Text, b"after".to_vec()),
            ]
        );
        assert!(server.chunks.is_empty());
        assert_eq!(queued(&server.chunks), 0);
    }

    #[tokio::test]
    async fn more_chunks_than_one_write_takes_keep_their_order() {
        use futures::SinkExt;

        let server_options = Negotiation::new(None, &Options::default(), Role::Server).unwrap();
        let client_options = Negotiation::new(None, &Options::default(), Role::Client).unwrap();
        let (server_io, client_io) = duplex(1000);
        let mut server = Streaming::new(Role::Server, server_io, Bytes::new(), &server_options);
        let mut client = Streaming::new(Role::Client, client_io, Bytes::new(), &client_options);

        // Large and small frames in turn, queued without a write in between: more
        // chunks than one vectored write takes, with small frames in the buffer.
        let frames: Vec<Vec<u8>> = (0..100u8)
            .map(|i| {
                let len = if i % 2 == 0 { 3_000 } else { 10 };
                vec![i; len]
            })
            .collect();
        let sending = async {
            for frame in &frames {
                server.start_send_unpin(Frame::binary(frame.clone())).unwrap();
            }
            assert!(server.chunks.len() > MAX_WRITE_CHUNKS);
            server.flush().await.unwrap();
        };
        let receiving = async {
            let mut received = Vec::new();
            for _ in 0..frames.len() {
                received.push(client.next_frame().await.unwrap().payload.to_vec());
            }
            received
        };
        let ((), received) = tokio::join!(sending, receiving);
        assert_eq!(received, frames);
        assert!(server.chunks.is_empty());
    }

    #[tokio::test]
    async fn a_close_goes_out_after_the_chunks_queued_before_it() {
        use futures::SinkExt;

        let server_options = Negotiation::new(None, &Options::default(), Role::Server).unwrap();
        let client_options = Negotiation::new(None, &Options::default(), Role::Client).unwrap();
        let (server_io, client_io) = duplex(500);
        let mut server = Streaming::new(Role::Server, server_io, Bytes::new(), &server_options);
        let mut client = Streaming::new(Role::Client, client_io, Bytes::new(), &client_options);

        let large = vec![7u8; 50_000];
        let sending = async {
            server.start_send_unpin(Frame::binary(large.clone())).unwrap();
            assert!(!server.chunks.is_empty());
            server.close().await.unwrap();
        };
        let receiving = async {
            let first = client.next_frame().await.unwrap();
            let second = client.next_frame().await.unwrap();
            (first.opcode, first.payload.to_vec(), second.opcode)
        };
        let ((), (opcode, payload, then)) = tokio::join!(sending, receiving);
        assert_eq!((opcode, payload), (OpCode::Binary, large));
        assert_eq!(then, OpCode::Close);
    }
}
