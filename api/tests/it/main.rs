//! API tests over a fake cluster: every HTTP route (success and failure), the error
//! mapping, the OpenAPI document against the router, and gRPC over a real server.

mod common;
mod grpc;
mod http;
mod openapi;
