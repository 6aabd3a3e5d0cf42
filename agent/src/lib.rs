//! Host <-> guest agent protocol (grows with the sandbox API).
