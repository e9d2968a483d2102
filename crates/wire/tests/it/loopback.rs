//! The codec under `Framed` over a real loopback TCP connection.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use outpost_wire::messages::{ChunkRequest, ChunkResponse};
use outpost_wire::{Message, MessageCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

#[tokio::test]
async fn chunk_requests_over_loopback_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let object: Bytes = (0..1_000_000u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let served = object.clone();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut framed = Framed::new(sock, MessageCodec::new());
        while let Some(m) = framed.next().await {
            let Message::ChunkRequest(req) = m.unwrap() else {
                panic!("expected ChunkRequest")
            };
            let start = (req.offset as usize).min(served.len());
            let end = (start + req.length as usize).min(served.len());
            framed
                .send(Message::from(ChunkResponse {
                    object_id: req.object_id,
                    offset: req.offset,
                    data: served.slice(start..end),
                    total_size: served.len() as u64,
                }))
                .await
                .unwrap();
        }
    });
    let mut client = Framed::new(TcpStream::connect(addr).await.unwrap(), MessageCodec::new());
    let mut got = Vec::new();
    // Bounded: at most 100 requests for a 1 MB object in 64 KiB chunks.
    for _ in 0..100 {
        client
            .send(Message::from(ChunkRequest {
                object_id: "obj".into(),
                offset: got.len() as u64,
                length: 65536,
            }))
            .await
            .unwrap();
        let Some(Ok(Message::ChunkResponse(c))) = client.next().await else {
            panic!("no response")
        };
        assert_eq!(c.offset, got.len() as u64);
        got.extend_from_slice(&c.data);
        if got.len() as u64 == c.total_size {
            break;
        }
    }
    assert_eq!(got, object);
    drop(client);
    server.await.unwrap();
}
