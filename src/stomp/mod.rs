//! STOMP protocol support: the frame model ([`Frame`], [`Command`], [`Version`]) and the
//! wire codec ([`decode`], [`encode`]) shared by every transport.

pub mod codec;
pub mod frame;

pub use codec::*;
pub use frame::*;
