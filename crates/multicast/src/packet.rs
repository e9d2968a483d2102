//! Datagram formats: every packet starts with a 12-byte header
//! (`magic u16 = 0x4f4d`, `version u8 = 1`, `type u8`, `session u64`), big-endian throughout.
//!
//! | type | name     | body                                                            |
//! |------|----------|-----------------------------------------------------------------|
//! | 1    | Data     | `seq u64, block u32, esi u32, symbol[..]`                       |
//! | 2    | Announce | `chunk u16, chunks u16, total u32, bytes[..]` (manifest piece)  |
//! | 3    | Poll     | `poll u32, upto_block u32, high_seq u64`                        |
//! | 4    | Nak      | `poll u32, loss_permille u16, n u16, n × (block u32, missing u32)` |
//! | 5    | Ncf      | `poll u32, n u16, n × (block u32, planned u32)`                 |
//! | 6    | End      | `high_seq u64`                                                  |
//! | 7    | Done     | `file_hash [u8; 32]`                                            |
//! | 8    | Load     | `poll u32, jobs u32, dropped u32`                               |

use crate::error::{MulticastError, Result};

/// Protocol magic ("OM").
pub const MAGIC: u16 = 0x4f4d;
/// Protocol version.
pub const VERSION: u8 = 1;
/// Bytes of the common header.
pub const HEADER_LEN: usize = 12;
/// Bytes of a data packet before the symbol.
pub const DATA_HEADER_LEN: usize = HEADER_LEN + 16;
/// Largest datagram this crate builds or accepts.
pub const MAX_DATAGRAM: usize = 65_507;
/// Largest number of entries in a NAK or NCF.
pub const MAX_ENTRIES: usize = 1024;
/// Largest encoding symbol id RaptorQ allows (24 bits).
pub const MAX_ESI: u32 = (1 << 24) - 1;

/// One (block, count) pair in a NAK or NCF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCount {
    /// Block index.
    pub block: u32,
    /// Symbols missing (NAK) or repair symbols planned (NCF).
    pub count: u32,
}

/// A decoded datagram, borrowing its payload from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Packet<'a> {
    /// One encoding symbol of a block.
    Data {
        /// Session.
        session: u64,
        /// Sender's packet sequence number (for loss estimation).
        seq: u64,
        /// Block index.
        block: u32,
        /// Encoding symbol id: `< K` source, otherwise repair.
        esi: u32,
        /// The symbol.
        symbol: &'a [u8],
    },
    /// A piece of the signed manifest.
    Announce {
        /// Session.
        session: u64,
        /// Index of this piece.
        chunk: u16,
        /// Number of pieces.
        chunks: u16,
        /// Length of the whole signed manifest.
        total: u32,
        /// The bytes of this piece.
        bytes: &'a [u8],
    },
    /// The sender asks for NAKs for blocks below `upto_block`.
    Poll {
        /// Session.
        session: u64,
        /// Poll sequence number.
        poll: u32,
        /// Blocks `0..upto_block` have been sent in full.
        upto_block: u32,
        /// Highest data sequence number sent so far.
        high_seq: u64,
    },
    /// A receiver reports missing symbols.
    Nak {
        /// Session.
        session: u64,
        /// Poll being answered.
        poll: u32,
        /// Loss the receiver observed since its last report, per mille.
        loss_permille: u16,
        /// Missing symbols per block.
        entries: Vec<BlockCount>,
    },
    /// The sender confirms a NAK and says how much repair it will send (lets other receivers suppress theirs).
    Ncf {
        /// Session.
        session: u64,
        /// Poll the NAK answered.
        poll: u32,
        /// Repair planned per block.
        entries: Vec<BlockCount>,
    },
    /// The sender has finished the session.
    End {
        /// Session.
        session: u64,
        /// Highest data sequence number sent.
        high_seq: u64,
    },
    /// A receiver completed the file.
    Done {
        /// Session.
        session: u64,
        /// SHA-256 of the file as written.
        file_hash: [u8; 32],
    },
    /// A receiver answers a poll with signs that it cannot keep up with the rate: block
    /// jobs waiting for its CPU, datagrams its socket dropped for want of room. The sender
    /// slows down (see [`crate::ReceiverConfig::backlog_report_blocks`] and
    /// [`crate::Receiver::note_socket_drops`]).
    Load {
        /// Session.
        session: u64,
        /// Poll being answered.
        poll: u32,
        /// Blocks holding enough symbols that wait for decoding or their hash check.
        jobs: u32,
        /// Datagrams the receiver's socket dropped since its previous report.
        dropped: u32,
    },
}

impl Packet<'_> {
    /// The session the packet belongs to.
    pub fn session(&self) -> u64 {
        match self {
            Packet::Data { session, .. }
            | Packet::Announce { session, .. }
            | Packet::Poll { session, .. }
            | Packet::Nak { session, .. }
            | Packet::Ncf { session, .. }
            | Packet::End { session, .. }
            | Packet::Done { session, .. }
            | Packet::Load { session, .. } => *session,
        }
    }

    /// Appends the encoded packet to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (ty, session) = match self {
            Packet::Data { session, .. } => (1u8, session),
            Packet::Announce { session, .. } => (2, session),
            Packet::Poll { session, .. } => (3, session),
            Packet::Nak { session, .. } => (4, session),
            Packet::Ncf { session, .. } => (5, session),
            Packet::End { session, .. } => (6, session),
            Packet::Done { session, .. } => (7, session),
            Packet::Load { session, .. } => (8, session),
        };
        write_header(out, ty, *session);
        match self {
            Packet::Data {
                seq,
                block,
                esi,
                symbol,
                ..
            } => {
                write_data_header(out, *seq, *block, *esi);
                out.extend_from_slice(symbol);
            }
            Packet::Announce {
                chunk,
                chunks,
                total,
                bytes,
                ..
            } => {
                out.extend_from_slice(&chunk.to_be_bytes());
                out.extend_from_slice(&chunks.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
                out.extend_from_slice(bytes);
            }
            Packet::Poll {
                poll,
                upto_block,
                high_seq,
                ..
            } => {
                out.extend_from_slice(&poll.to_be_bytes());
                out.extend_from_slice(&upto_block.to_be_bytes());
                out.extend_from_slice(&high_seq.to_be_bytes());
            }
            Packet::Nak {
                poll,
                loss_permille,
                entries,
                ..
            } => {
                out.extend_from_slice(&poll.to_be_bytes());
                out.extend_from_slice(&loss_permille.to_be_bytes());
                write_entries(out, entries);
            }
            Packet::Ncf { poll, entries, .. } => {
                out.extend_from_slice(&poll.to_be_bytes());
                write_entries(out, entries);
            }
            Packet::End { high_seq, .. } => out.extend_from_slice(&high_seq.to_be_bytes()),
            Packet::Done { file_hash, .. } => out.extend_from_slice(file_hash),
            Packet::Load {
                poll,
                jobs,
                dropped,
                ..
            } => {
                out.extend_from_slice(&poll.to_be_bytes());
                out.extend_from_slice(&jobs.to_be_bytes());
                out.extend_from_slice(&dropped.to_be_bytes());
            }
        }
    }

    /// Decodes one datagram. Never panics; every malformed input is an [`MulticastError`].
    pub fn decode(buf: &[u8]) -> Result<Packet<'_>> {
        let mut r = Reader { buf, pos: 0 };
        let (ty, session) = r.common_header()?;
        let packet = match ty {
            1 => {
                let (seq, block, esi) = r.data_fields()?;
                let symbol = r.rest();
                if symbol.is_empty() {
                    return Err(MulticastError::invalid("symbol length", 0));
                }
                Packet::Data {
                    session,
                    seq,
                    block,
                    esi,
                    symbol,
                }
            }
            2 => {
                let chunk = r.u16("announce chunk")?;
                let chunks = r.u16("announce chunks")?;
                let total = r.u32("announce total")?;
                if chunks == 0 || chunk >= chunks {
                    return Err(MulticastError::invalid(
                        "announce chunk",
                        format!("{chunk}/{chunks}"),
                    ));
                }
                let bytes = r.rest();
                if bytes.is_empty() {
                    return Err(MulticastError::invalid("announce piece length", 0));
                }
                Packet::Announce {
                    session,
                    chunk,
                    chunks,
                    total,
                    bytes,
                }
            }
            3 => {
                let poll = r.u32("poll seq")?;
                let upto_block = r.u32("poll upto_block")?;
                let high_seq = r.u64("poll high_seq")?;
                r.finish("poll")?;
                Packet::Poll {
                    session,
                    poll,
                    upto_block,
                    high_seq,
                }
            }
            4 => {
                let poll = r.u32("nak poll")?;
                let loss_permille = r.u16("nak loss")?;
                if loss_permille > 1000 {
                    return Err(MulticastError::invalid("nak loss_permille", loss_permille));
                }
                let entries = r.entries("nak")?;
                r.finish("nak")?;
                Packet::Nak {
                    session,
                    poll,
                    loss_permille,
                    entries,
                }
            }
            5 => {
                let poll = r.u32("ncf poll")?;
                let entries = r.entries("ncf")?;
                r.finish("ncf")?;
                Packet::Ncf {
                    session,
                    poll,
                    entries,
                }
            }
            6 => {
                let high_seq = r.u64("end high_seq")?;
                r.finish("end")?;
                Packet::End { session, high_seq }
            }
            7 => {
                let h = r.take("done hash", 32)?;
                let mut file_hash = [0u8; 32];
                file_hash.copy_from_slice(h);
                r.finish("done")?;
                Packet::Done { session, file_hash }
            }
            8 => {
                let poll = r.u32("load poll")?;
                let jobs = r.u32("load jobs")?;
                let dropped = r.u32("load dropped")?;
                r.finish("load")?;
                Packet::Load {
                    session,
                    poll,
                    jobs,
                    dropped,
                }
            }
            other => return Err(MulticastError::UnknownPacketType(other)),
        };
        Ok(packet)
    }
}

/// The header of a data packet (its first [`DATA_HEADER_LEN`] bytes) on its own, for a
/// driver that reads the symbol into a separate buffer (see
/// [`crate::Receiver::symbol_slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DataHeader {
    /// Session.
    pub session: u64,
    /// Sender's packet sequence number.
    pub seq: u64,
    /// Block index.
    pub block: u32,
    /// Encoding symbol id.
    pub esi: u32,
}

impl DataHeader {
    /// Decodes exactly [`DATA_HEADER_LEN`] bytes as a data packet's header. Never panics;
    /// anything else (another packet type, a short or long buffer) is an [`MulticastError`].
    pub fn decode(head: &[u8]) -> Result<DataHeader> {
        let mut r = Reader { buf: head, pos: 0 };
        let (ty, session) = r.common_header()?;
        if ty != 1 {
            return Err(MulticastError::invalid("data header type", ty));
        }
        let (seq, block, esi) = r.data_fields()?;
        r.finish("data header")?;
        Ok(DataHeader {
            session,
            seq,
            block,
            esi,
        })
    }
}

/// Writes the data-packet header (common header must already be in `out`).
pub(crate) fn write_data_header(out: &mut Vec<u8>, seq: u64, block: u32, esi: u32) {
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(&esi.to_be_bytes());
}

/// Writes the common header.
pub(crate) fn write_header(out: &mut Vec<u8>, ty: u8, session: u64) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(VERSION);
    out.push(ty);
    out.extend_from_slice(&session.to_be_bytes());
}

fn write_entries(out: &mut Vec<u8>, entries: &[BlockCount]) {
    let n = entries.len().min(MAX_ENTRIES);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    for e in &entries[..n] {
        out.extend_from_slice(&e.block.to_be_bytes());
        out.extend_from_slice(&e.count.to_be_bytes());
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8]> {
        let available = self.buf.len() - self.pos;
        if available < n {
            return Err(MulticastError::Truncated {
                what,
                needed: n,
                available,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(what, 1)?[0])
    }
    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16> {
        let b = self.take(what, 2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32> {
        let b = self.take(what, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64> {
        let b = self.take(what, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    pub(crate) fn finish(&self, what: &'static str) -> Result<()> {
        let left = self.buf.len() - self.pos;
        if left != 0 {
            return Err(MulticastError::TrailingBytes(left, what));
        }
        Ok(())
    }
    /// The common header: magic and version checked, `(type, session)` returned.
    fn common_header(&mut self) -> Result<(u8, u64)> {
        let magic = self.u16("magic")?;
        if magic != MAGIC {
            return Err(MulticastError::BadMagic(magic));
        }
        let version = self.u8("version")?;
        if version != VERSION {
            return Err(MulticastError::UnsupportedVersion(version));
        }
        let ty = self.u8("type")?;
        let session = self.u64("session")?;
        Ok((ty, session))
    }

    /// `seq, block, esi` of a data packet, the symbol id checked.
    fn data_fields(&mut self) -> Result<(u64, u32, u32)> {
        let seq = self.u64("data seq")?;
        let block = self.u32("data block")?;
        let esi = self.u32("data esi")?;
        if esi > MAX_ESI {
            return Err(MulticastError::invalid("esi", esi));
        }
        Ok((seq, block, esi))
    }
    fn entries(&mut self, what: &'static str) -> Result<Vec<BlockCount>> {
        let n = self.u16(what)? as usize;
        if n > MAX_ENTRIES {
            return Err(MulticastError::invalid("entry count", n));
        }
        // The length is checked against the bytes present before allocating.
        let body = self.take(what, n * 8)?;
        Ok(body
            .chunks_exact(8)
            .map(|c| BlockCount {
                block: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                count: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect())
    }
}
