//! Reassembling client messages from WebSocket frames (RFC 6455), as a pure state machine over
//! a byte buffer: unmasking, fragments, control frames between fragments, text validated as
//! UTF-8 across fragments and across reads, the message size limit and the close codes
//! 1002/1007/1009. It does no I/O, so that every socket read, however the bytes were cut, goes
//! through the same code the `websocket` fuzz target drives with arbitrary bytes in arbitrary
//! pieces; [`super::websocket::WsReader`] fills its input from the socket and sends the pongs it
//! asks for.

use bytes::BytesMut;

use super::wsframe::{self, Opcode, Violation};

/// Close code: the peer broke the protocol.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Close code: a text message that is not UTF-8.
pub const INVALID_TEXT: u16 = 1007;

/// What one parsing pass got to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// This many payload bytes were added; more input is needed.
    More(usize),
    /// A message ended (text or not); the bytes before it were added.
    End(bool),
    /// The client sent a ping: the caller answers with a pong carrying `payload`, then parses
    /// on. `added` payload bytes were added before it.
    Ping {
        /// The ping's payload, unmasked.
        payload: BytesMut,
        /// Payload bytes added to the caller's buffer before the ping.
        added: usize,
    },
    /// The client sent a close frame.
    Closed,
}

/// The reader's state between reads.
#[derive(Debug)]
pub struct Reassembler {
    /// Socket bytes not yet parsed; freed whenever empty.
    raw: BytesMut,
    /// The data frame whose payload is being read: its header and how much of it was read.
    frame: Option<(wsframe::Header, usize)>,
    /// A message is in progress: whether it is text, and its size so far.
    message: Option<(bool, usize)>,
    /// The end of a text message split inside a UTF-8 sequence, kept for the next piece.
    utf8_carry: Vec<u8>,
    max_message: usize,
}

impl Reassembler {
    /// A reassembler refusing messages over `max_message` bytes (with 1009).
    pub fn new(max_message: usize) -> Reassembler {
        Reassembler {
            raw: BytesMut::new(),
            frame: None,
            message: None,
            utf8_carry: Vec::new(),
            max_message,
        }
    }

    /// The bytes received and not yet parsed: the caller appends what it reads to them.
    pub fn input(&mut self) -> &mut BytesMut {
        &mut self.raw
    }

    /// Moves whole or partial payloads from the input into `buf`. With `whole`, stops at the
    /// end of a message. A violation leaves the reassembler unusable: the connection must end
    /// with the violation's close code.
    pub fn parse(&mut self, buf: &mut BytesMut, whole: bool) -> Result<Parsed, Violation> {
        let mut added = 0;
        loop {
            if let Some((header, read)) = self.frame {
                let take = (header.payload_len - read).min(self.raw.len());
                if take == 0 && header.payload_len > read {
                    return Ok(Parsed::More(added));
                }
                let mut piece = self.raw.split_to(take);
                wsframe::unmask(&mut piece, header.mask, read);
                let text = self.message.is_some_and(|(text, _)| text);
                if text {
                    self.check_utf8(&piece, false)?;
                }
                buf.extend_from_slice(&piece);
                added += take;
                if read + take < header.payload_len {
                    self.frame = Some((header, read + take));
                    return Ok(Parsed::More(added));
                }
                self.frame = None;
                if header.fin {
                    if text {
                        self.check_utf8(&[], true)?;
                    }
                    self.message = None;
                    if whole {
                        return Ok(Parsed::End(text));
                    }
                }
                continue;
            }
            let Some(header) = wsframe::parse_header(&self.raw, self.max_message)? else {
                return Ok(Parsed::More(added));
            };
            if header.opcode.is_control() {
                if self.raw.len() < header.header_len + header.payload_len {
                    return Ok(Parsed::More(added));
                }
                let _ = self.raw.split_to(header.header_len);
                let mut payload = self.raw.split_to(header.payload_len);
                wsframe::unmask(&mut payload, header.mask, 0);
                match header.opcode {
                    Opcode::Ping => return Ok(Parsed::Ping { payload, added }),
                    Opcode::Close => return Ok(Parsed::Closed),
                    _ => {}
                }
                continue;
            }
            let size = match (header.opcode, self.message) {
                (Opcode::Continuation, Some((_, size))) => size,
                (Opcode::Continuation, None) => {
                    return Err(protocol_error("continuation without a message"))
                }
                (_, Some(_)) => return Err(protocol_error("new message inside a fragmented one")),
                (opcode, None) => {
                    self.message = Some((opcode == Opcode::Text, 0));
                    0
                }
            };
            let total = size + header.payload_len;
            if total > self.max_message {
                return Err(Violation {
                    code: wsframe::TOO_BIG,
                    reason: "message too big",
                });
            }
            if let Some((text, _)) = self.message {
                self.message = Some((text, total));
            }
            let _ = self.raw.split_to(header.header_len);
            self.frame = Some((header, 0));
        }
    }

    /// Validates text incrementally; a sequence cut at a piece boundary waits for the next.
    fn check_utf8(&mut self, piece: &[u8], end: bool) -> Result<(), Violation> {
        let mut data = std::mem::take(&mut self.utf8_carry);
        data.extend_from_slice(piece);
        match std::str::from_utf8(&data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() && !end => {
                self.utf8_carry = data[e.valid_up_to()..].to_vec();
                Ok(())
            }
            Err(_) => Err(Violation {
                code: INVALID_TEXT,
                reason: "text message is not valid UTF-8",
            }),
        }
    }

    /// Gives back an emptied input buffer, so an idle connection holds none.
    pub fn release(&mut self) {
        if self.raw.is_empty() {
            self.raw = BytesMut::new();
        }
    }
}

fn protocol_error(reason: &'static str) -> Violation {
    Violation {
        code: PROTOCOL_ERROR,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 80, 7, 255];
        let mut f = vec![(u8::from(fin) << 7) | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    #[test]
    fn a_ping_between_fragments_is_handed_out_with_the_bytes_before_it() {
        let mut r = Reassembler::new(100);
        let wire = [
            client_frame(false, 0x1, b"ab"),
            client_frame(true, 0x9, b"p"),
            client_frame(true, 0x0, b"c"),
        ]
        .concat();
        let mut buf = BytesMut::new();
        // Fed one byte at a time, as a slow socket would.
        let mut got = Vec::new();
        for b in wire {
            r.input().extend_from_slice(&[b]);
            loop {
                match r.parse(&mut buf, true).unwrap() {
                    Parsed::More(_) => break,
                    other => got.push(other),
                }
            }
        }
        assert_eq!(
            got,
            [
                Parsed::Ping {
                    payload: BytesMut::from(&b"p"[..]),
                    added: 0
                },
                Parsed::End(true)
            ]
        );
        assert_eq!(&buf[..], b"abc");
    }

    #[test]
    fn stream_mode_counts_the_bytes_before_a_ping() {
        let mut r = Reassembler::new(100);
        let wire = [client_frame(true, 0x2, b"xy"), client_frame(true, 0x9, b"")].concat();
        r.input().extend_from_slice(&wire);
        let mut buf = BytesMut::new();
        assert_eq!(
            r.parse(&mut buf, false),
            Ok(Parsed::Ping {
                payload: BytesMut::new(),
                added: 2
            })
        );
        assert_eq!(r.parse(&mut buf, false), Ok(Parsed::More(0)));
        assert_eq!(&buf[..], b"xy");
    }
}
