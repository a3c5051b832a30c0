//! The messages of `proto/pushgate/v1/gateway.proto`, derived with prost: the file is the contract, these mirror it tag for tag.
//!
//! Written out rather than generated at build time, so a plain `cargo build`
//! needs no `protoc` and no build script. The Python tests (tests/grpc/) talk
//! to the server through stubs that grpcio-tools generates from the `.proto`
//! itself, so a tag or type that drifted from the contract fails them.

/// `pushgate.v1.SubscribeRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeRequest {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(string, repeated, tag = "2")]
    pub keys: Vec<String>,
    #[prost(string, tag = "3")]
    pub prefix: String,
    #[prost(string, tag = "4")]
    pub cursor: String,
    #[prost(bool, optional, tag = "5")]
    pub snapshot: Option<bool>,
    #[prost(string, tag = "6")]
    pub filter_json: String,
    #[prost(string, repeated, tag = "7")]
    pub fields: Vec<String>,
    #[prost(string, tag = "8")]
    pub delta: String,
    #[prost(double, tag = "9")]
    pub max_rate: f64,
    #[prost(string, tag = "10")]
    pub resume: String,
}

/// `pushgate.v1.Event`: one of the messages a subscription streams.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(oneof = "event::Kind", tags = "1, 2, 3, 4, 5")]
    pub kind: Option<event::Kind>,
}

/// The `kind` oneof of [`Event`].
pub mod event {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Subscribed(super::Subscribed),
        #[prost(message, tag = "2")]
        Record(super::Record),
        #[prost(message, tag = "3")]
        Live(super::Live),
        #[prost(message, tag = "4")]
        Gap(super::Gap),
        #[prost(message, tag = "5")]
        TokenExpiring(super::TokenExpiring),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Subscribed {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(string, tag = "2")]
    pub cursor: String,
    #[prost(bool, tag = "3")]
    pub recovered: bool,
    #[prost(uint32, tag = "4")]
    pub snapshot: u32,
    #[prost(bool, tag = "5")]
    pub snapshot_partial: bool,
    #[prost(string, tag = "6")]
    pub snapshot_partial_reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(string, optional, tag = "2")]
    pub key: Option<String>,
    #[prost(uint32, tag = "3")]
    pub partition: u32,
    #[prost(uint64, tag = "4")]
    pub offset: u64,
    #[prost(string, tag = "5")]
    pub cursor: String,
    #[prost(int64, tag = "6")]
    pub timestamp_ms: i64,
    #[prost(bytes = "vec", tag = "7")]
    pub data_json: Vec<u8>,
    #[prost(bool, tag = "8")]
    pub snapshot: bool,
    #[prost(string, tag = "9")]
    pub op: String,
    #[prost(bytes = "vec", tag = "10")]
    pub patch_json: Vec<u8>,
    #[prost(bytes = "vec", tag = "11")]
    pub extra_json: Vec<u8>,
    #[prost(string, tag = "12")]
    pub position: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Live {
    #[prost(uint64, tag = "1")]
    pub replayed: u64,
    #[prost(string, tag = "2")]
    pub cursor: String,
    #[prost(uint64, optional, tag = "3")]
    pub compacted: Option<u64>,
    #[prost(uint64, optional, tag = "4")]
    pub snapshot_skipped: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Gap {
    #[prost(string, tag = "1")]
    pub reason: String,
    #[prost(string, tag = "2")]
    pub earliest: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TokenExpiring {
    #[prost(uint64, tag = "1")]
    pub grace_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishRequest {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(message, repeated, tag = "2")]
    pub records: Vec<PublishRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishRecord {
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    #[prost(bytes = "vec", tag = "2")]
    pub data_json: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishResponse {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(message, repeated, tag = "2")]
    pub records: Vec<Appended>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Appended {
    #[prost(uint32, tag = "1")]
    pub partition: u32,
    #[prost(uint64, tag = "2")]
    pub offset: u64,
    #[prost(string, tag = "3")]
    pub cursor: String,
    #[prost(string, tag = "4")]
    pub position: String,
}
