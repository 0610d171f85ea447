//! Recognising a client's complete first flight: the TLS ClientHello, which every
//! kube-apiserver client sends first and every live server answers. apilb connects to a
//! server only once it has this (an idle or stalled client costs no server a connection),
//! and only a server that stays silent after a complete ClientHello is a frozen server.
//!
//! Owns only the parsing of the bytes read so far (record headers and the handshake
//! header, never the ClientHello's contents); it does no I/O and keeps no state, and it must
//! not judge anything beyond "complete, incomplete, or not a TLS handshake".

/// TLS records carry at most 2^14 bytes of plaintext; allow what TLS 1.2 allows ciphertext
/// (2^14 + 2048), which a ClientHello never needs, before calling it "not TLS".
const MAX_RECORD: usize = (1 << 14) + 2048;
const HANDSHAKE: u8 = 0x16;
const CLIENT_HELLO: u8 = 0x01;

/// How far the client's first flight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A ClientHello so far, not yet complete (or nothing yet).
    Incomplete,
    /// A complete ClientHello (possibly followed by more bytes).
    Complete,
    /// Not a TLS ClientHello: the bytes are passed on as they are, and no server is judged
    /// by whether it answers them.
    NotTls,
}

/// Where the bytes read so far (`buf`, from the connection's first byte) stand.
pub fn progress(buf: &[u8]) -> Progress {
    // The handshake message's 4-byte header (type, 24-bit length), which may in principle
    // span records, and how many of its bytes the records so far carried.
    let mut header = [0u8; 4];
    let mut have = 0usize;
    let mut rest = buf;
    loop {
        let Some(&kind) = rest.first() else {
            return Progress::Incomplete;
        };
        if kind != HANDSHAKE || rest.get(1).is_some_and(|&major| major != 3) {
            return Progress::NotTls;
        }
        if rest.len() < 5 {
            return Progress::Incomplete;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD {
            return Progress::NotTls;
        }
        let body = &rest[5..];
        let got = &body[..body.len().min(len)];
        for &b in got {
            if have < 4 {
                header[have] = b;
            }
            have += 1;
        }
        if have >= 1 && header[0] != CLIENT_HELLO {
            return Progress::NotTls;
        }
        if have >= 4 {
            let want = 4
                + (usize::from(header[1]) << 16 | usize::from(header[2]) << 8)
                + usize::from(header[3]);
            if have >= want {
                return Progress::Complete;
            }
        }
        if got.len() < len {
            return Progress::Incomplete;
        }
        rest = &body[len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello of `n` body bytes in one record.
    fn hello(n: usize) -> Vec<u8> {
        let hs_len = n;
        let rec_len = 4 + n;
        let mut v = vec![
            HANDSHAKE,
            3,
            1,
            (rec_len >> 8) as u8,
            rec_len as u8,
            CLIENT_HELLO,
            (hs_len >> 16) as u8,
            (hs_len >> 8) as u8,
            hs_len as u8,
        ];
        v.extend(std::iter::repeat_n(0xab, n));
        v
    }

    #[test]
    fn complete_only_once_every_byte_is_there() {
        let h = hello(500);
        for cut in 0..h.len() {
            assert_eq!(progress(&h[..cut]), Progress::Incomplete, "cut at {cut}");
        }
        assert_eq!(progress(&h), Progress::Complete);
        let mut more = h.clone();
        more.extend_from_slice(b"early");
        assert_eq!(progress(&more), Progress::Complete);
    }

    #[test]
    fn a_hello_split_over_records() {
        // 600 body bytes: the handshake message (604 bytes) in two records of 302.
        let msg = &hello(600)[5..];
        let mut v = Vec::new();
        for part in msg.chunks(302) {
            let len = (part.len() as u16).to_be_bytes();
            v.extend_from_slice(&[HANDSHAKE, 3, 3, len[0], len[1]]);
            v.extend_from_slice(part);
        }
        assert_eq!(progress(&v[..5 + 302]), Progress::Incomplete);
        assert_eq!(progress(&v[..v.len() - 1]), Progress::Incomplete);
        assert_eq!(progress(&v), Progress::Complete);
    }

    #[test]
    fn other_first_bytes_are_not_tls() {
        assert_eq!(progress(b"GET / HTTP/1.1\r\n"), Progress::NotTls);
        assert_eq!(progress(b"x"), Progress::NotTls);
        assert_eq!(progress(&[HANDSHAKE, 9]), Progress::NotTls);
        assert_eq!(progress(&[HANDSHAKE, 3, 1, 0, 0]), Progress::NotTls);
        assert_eq!(progress(&[HANDSHAKE, 3, 1, 0xff, 0xff]), Progress::NotTls);
        // A handshake record that is not a ClientHello (a ServerHello: type 2).
        assert_eq!(
            progress(&[HANDSHAKE, 3, 3, 0, 4, 2, 0, 0, 0]),
            Progress::NotTls
        );
        assert_eq!(progress(&[HANDSHAKE]), Progress::Incomplete);
        assert_eq!(progress(&[]), Progress::Incomplete);
    }

    #[test]
    fn never_panics_on_any_prefix_of_noise() {
        let mut x: u32 = 7;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        for start in [0usize, 1, 2, 3] {
            let mut v = vec![HANDSHAKE, 3, 1];
            v.extend_from_slice(&noise[start..]);
            for cut in 0..200 {
                let _ = progress(&v[..cut]);
            }
            let _ = progress(&v);
        }
    }
}
