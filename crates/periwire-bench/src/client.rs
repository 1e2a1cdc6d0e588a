//! A lean, blocking, pipelining USB/IP client: the one load generator that drives every
//! server in the comparison, so that differences in the table come from the servers.
//!
//! One thread, one socket, no allocation per URB: it keeps `depth` URBs in flight, writes
//! every refill of a round in one vectored `write`, and reads replies in large chunks,
//! decoding them with periwire's sans-IO codec (which checks every reply against the URB it
//! answers, so a wrong length or an unknown sequence number is an error, not a number).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use periwire_wire::usbip::{
    BusId, CmdSubmit, CmdUnlink, Direction, Limits, OpReply, OpRequest, PendingUrb, SubmitHeader,
    UrbReply, URB_HEADER_LEN,
};

/// −ECONNRESET: what a RET_UNLINK of a URB that was still pending says.
pub const ECONNRESET: i32 = -104;

/// Bytes read from the socket at most per `read` call.
const READ_CHUNK: usize = 1024 * 1024;

/// One kind of URB a run submits over and over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrbSpec {
    /// Endpoint number (0 for control).
    pub ep: u8,
    /// Direction of the data stage.
    pub direction: Direction,
    /// SETUP packet (control transfers).
    pub setup: [u8; 8],
    /// Bytes per URB: asked for (IN) or carried (OUT).
    pub length: u32,
}

impl UrbSpec {
    /// GET_DESCRIPTOR(DEVICE), 18 bytes, on the default control pipe.
    pub fn get_device_descriptor() -> Self {
        Self {
            ep: 0,
            direction: Direction::In,
            setup: [0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 18, 0],
            length: 18,
        }
    }

    /// A bulk (or interrupt) IN of `length` bytes on endpoint address `ep`.
    pub fn bulk_in(ep: u8, length: u32) -> Self {
        Self {
            ep: ep & 0x0f,
            direction: Direction::In,
            setup: [0; 8],
            length,
        }
    }

    /// A bulk OUT of `length` bytes on endpoint address `ep`.
    pub fn bulk_out(ep: u8, length: u32) -> Self {
        Self {
            ep: ep & 0x0f,
            direction: Direction::Out,
            setup: [0; 8],
            length,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// URBs completed.
    pub urbs: u64,
    /// Payload bytes moved (actual lengths).
    pub bytes: u64,
    /// From the first submission to the last reply.
    pub elapsed: Duration,
    /// Submit-to-reply time of every URB, when asked for.
    pub latencies: Vec<Duration>,
}

impl RunStats {
    /// URBs per second.
    pub fn urb_rate(&self) -> f64 {
        self.urbs as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload bytes per second.
    pub fn byte_rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64()
    }
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// Submit until this much time has passed, then drain.
    After(Duration),
    /// Submit exactly this many URBs.
    Count(u64),
}

/// A TCP connection to `addr` with TCP_NODELAY, as vhci-hcd's tools set it.
pub fn connect(addr: &str) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An error for a reply that breaks the protocol or the expectation.
fn protocol(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// A connected byte stream to a server: TCP, or TLS over TCP.
pub trait ByteStream: Read + Write + Send {}

impl<T: Read + Write + Send> ByteStream for T {}

/// An imported device: a socket in the URB phase.
pub struct Connection {
    stream: Box<dyn ByteStream>,
    devid: u32,
    next_seqnum: u32,
    /// Received bytes not yet decoded live in `rbuf[rpos..rlen]`.
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    /// The OUT payload every OUT URB carries (a pattern; servers only count it).
    payload: Vec<u8>,
    /// URBs submitted outside a run that stay pending (an idle interrupt IN).
    parked: Vec<(u32, PendingUrb)>,
}

impl Connection {
    /// Imports `busid` from the server at `addr` (TCP_NODELAY, as vhci-hcd's tools set it).
    pub fn import(addr: &str, busid: &str) -> io::Result<Self> {
        Self::import_over(Box::new(connect(addr)?), busid)
    }

    /// Imports `busid` over `stream`, a connection in the operation phase.
    pub fn import_over(mut stream: Box<dyn ByteStream>, busid: &str) -> io::Result<Self> {
        let busid = BusId::new(busid).map_err(|e| protocol(e.to_string()))?;
        let mut out = Vec::new();
        OpRequest::Import { busid }.encode(&mut out);
        stream.write_all(&out)?;
        let limits = Limits::default();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        let device = loop {
            if let Some((reply, n)) =
                OpReply::decode(&buf, &limits).map_err(|e| protocol(e.to_string()))?
            {
                if n != buf.len() {
                    return Err(protocol("bytes after OP_REP_IMPORT"));
                }
                match reply {
                    OpReply::Import(Ok(d)) => break d,
                    OpReply::Import(Err(status)) => {
                        return Err(protocol(format!("import refused: {status}")))
                    }
                    OpReply::Devlist(_) => return Err(protocol("unexpected device list")),
                }
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(protocol("server closed during import"));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        Ok(Self {
            stream,
            devid: device.devid(),
            next_seqnum: 1,
            rbuf: vec![0; 4 * READ_CHUNK],
            rpos: 0,
            rlen: 0,
            payload: Vec::new(),
            parked: Vec::new(),
        })
    }

    fn seqnum(&mut self) -> u32 {
        let s = self.next_seqnum;
        self.next_seqnum = self.next_seqnum.wrapping_add(1).max(1);
        s
    }

    fn encode_header(&self, seqnum: u32, spec: &UrbSpec, out: &mut Vec<u8>) {
        CmdSubmit {
            header: SubmitHeader {
                seqnum,
                devid: self.devid,
                direction: spec.direction,
                ep: spec.ep,
                transfer_flags: 0,
                transfer_buffer_length: spec.length,
                start_frame: 0,
                non_iso_marker: false,
                interval: 0,
                setup: spec.setup,
                number_of_packets: 0,
            },
            data: &[],
            iso_packets: Vec::new(),
        }
        .encode(out);
    }

    /// Submits one URB that is expected to stay pending (an idle interrupt IN) and returns
    /// its sequence number; [`Self::unlink_parked`] cancels it.
    pub fn park(&mut self, spec: &UrbSpec) -> io::Result<u32> {
        if spec.direction != Direction::In {
            return Err(protocol("only IN URBs can be parked"));
        }
        let seqnum = self.seqnum();
        let mut hdr = Vec::with_capacity(URB_HEADER_LEN);
        self.encode_header(seqnum, spec, &mut hdr);
        self.stream.write_all(&hdr)?;
        self.parked.push((
            seqnum,
            PendingUrb {
                direction: spec.direction,
                transfer_buffer_length: spec.length,
            },
        ));
        Ok(seqnum)
    }

    /// Unlinks every parked URB and returns the RET_UNLINK statuses (−ECONNRESET each if they
    /// really stayed pending; 0 if one had completed, whose RET_SUBMIT is then consumed).
    pub fn unlink_parked(&mut self) -> io::Result<Vec<i32>> {
        let mut statuses = Vec::new();
        while let Some(&(target, _)) = self.parked.first() {
            let seqnum = self.seqnum();
            let mut out = Vec::with_capacity(URB_HEADER_LEN);
            CmdUnlink {
                seqnum,
                devid: self.devid,
                unlink_seqnum: target,
            }
            .encode(&mut out);
            self.stream.write_all(&out)?;
            let status = loop {
                match self.next_reply()? {
                    Reply::Unlink { seqnum: s, status } if s == seqnum => break status,
                    Reply::Submit { seqnum: s, .. } if s == target => {}
                    other => return Err(protocol(format!("unexpected reply {other:?}"))),
                }
            };
            self.parked.retain(|(s, _)| *s != target);
            statuses.push(status);
        }
        Ok(statuses)
    }

    /// Decodes the next reply, reading as needed. `in_flight` resolves RET_SUBMITs.
    fn next_reply_with(
        &mut self,
        in_flight: &VecDeque<InFlight>,
        spec: &PendingUrb,
    ) -> io::Result<Reply> {
        loop {
            let parked = &self.parked;
            let lookup = |seq: u32| {
                if in_flight.iter().any(|f| f.seqnum == seq) {
                    Some(*spec)
                } else {
                    parked.iter().find(|(s, _)| *s == seq).map(|(_, p)| *p)
                }
            };
            let limits = Limits::default();
            let decoded = UrbReply::decode(&self.rbuf[self.rpos..self.rlen], &limits, lookup)
                .map_err(|e| protocol(e.to_string()))?;
            if let Some((reply, n)) = decoded {
                self.rpos += n;
                return Ok(match reply {
                    UrbReply::Submit(s) => Reply::Submit {
                        seqnum: s.seqnum,
                        status: s.status,
                        actual: s.actual_length,
                    },
                    UrbReply::Unlink(u) => Reply::Unlink {
                        seqnum: u.seqnum,
                        status: u.status,
                    },
                });
            }
            self.fill()?;
        }
    }

    fn next_reply(&mut self) -> io::Result<Reply> {
        let none = PendingUrb {
            direction: Direction::In,
            transfer_buffer_length: 0,
        };
        self.next_reply_with(&VecDeque::new(), &none)
    }

    /// Reads more bytes into the receive buffer, compacting it only when the tail is short.
    fn fill(&mut self) -> io::Result<()> {
        if self.rbuf.len() - self.rlen < READ_CHUNK {
            self.rbuf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
        let end = (self.rlen + READ_CHUNK).min(self.rbuf.len());
        let n = self.stream.read(&mut self.rbuf[self.rlen..end])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        self.rlen += n;
        Ok(())
    }

    /// Keeps `depth` URBs of `spec` in flight until `stop`, checking every reply (status 0,
    /// full length). Records each URB's latency when `latencies` is set.
    pub fn run(
        &mut self,
        spec: &UrbSpec,
        depth: usize,
        stop: Stop,
        latencies: bool,
    ) -> io::Result<RunStats> {
        let depth = depth.max(1);
        if spec.direction == Direction::Out && self.payload.len() < spec.length as usize {
            self.payload = (0..spec.length).map(|i| i as u8).collect();
        }
        let pending = PendingUrb {
            direction: spec.direction,
            transfer_buffer_length: spec.length,
        };
        let mut stats = RunStats::default();
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(depth);
        let mut headers: Vec<u8> = Vec::with_capacity(depth * URB_HEADER_LEN);
        let start = Instant::now();
        let mut submitted = 0u64;
        loop {
            // Refill: every URB this round submits goes out in one vectored write.
            let open = match stop {
                Stop::After(d) => start.elapsed() < d,
                Stop::Count(n) => submitted < n,
            };
            let mut refill = 0;
            if open {
                let limit = match stop {
                    Stop::Count(n) => (n - submitted).min(depth as u64) as usize,
                    Stop::After(_) => depth,
                };
                headers.clear();
                let now = Instant::now();
                while in_flight.len() < depth && refill < limit {
                    let seqnum = self.seqnum();
                    self.encode_header(seqnum, spec, &mut headers);
                    in_flight.push_back(InFlight { seqnum, at: now });
                    refill += 1;
                }
                submitted += refill as u64;
                if refill > 0 {
                    self.write_submits(&headers, refill, spec)?;
                }
            }
            if in_flight.is_empty() {
                break;
            }
            // Take every reply already received (at least one).
            loop {
                let reply = self.next_reply_with(&in_flight, &pending)?;
                let Reply::Submit {
                    seqnum,
                    status,
                    actual,
                } = reply
                else {
                    return Err(protocol(format!("unexpected {reply:?}")));
                };
                if status != 0 || actual != spec.length {
                    return Err(protocol(format!(
                        "URB {seqnum}: status {status}, {actual} of {} bytes",
                        spec.length
                    )));
                }
                let Some(i) = in_flight.iter().position(|f| f.seqnum == seqnum) else {
                    return Err(protocol(format!("reply for parked URB {seqnum}")));
                };
                let f = in_flight.remove(i).expect("index from position");
                if latencies {
                    stats.latencies.push(f.at.elapsed());
                }
                stats.urbs += 1;
                stats.bytes += u64::from(actual);
                if in_flight.is_empty() || !self.has_header() {
                    break;
                }
            }
        }
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// Whether the receive buffer holds at least a whole header (a cheap hint that another
    /// reply may be decodable without blocking).
    fn has_header(&self) -> bool {
        self.rlen - self.rpos >= URB_HEADER_LEN
    }

    fn write_submits(&mut self, headers: &[u8], count: usize, spec: &UrbSpec) -> io::Result<()> {
        if spec.direction == Direction::In {
            return self.stream.write_all(headers);
        }
        let payload = &self.payload[..spec.length as usize];
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * count);
        for h in headers.chunks(URB_HEADER_LEN) {
            slices.push(IoSlice::new(h));
            slices.push(IoSlice::new(payload));
        }
        let mut bufs = &mut slices[..];
        while !bufs.is_empty() {
            let n = self.stream.write_vectored(bufs)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    seqnum: u32,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Reply {
    Submit {
        seqnum: u32,
        status: i32,
        actual: u32,
    },
    Unlink {
        seqnum: u32,
        status: i32,
    },
}
