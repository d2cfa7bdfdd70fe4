//! The agent's integration tests, one binary: the agent in-process and as the real binary, against
//! the real api and gateway or a stand-in VectorFlow server, supervising the stand-in `vector` from
//! `tests/fixtures/`.

mod binary;
mod common;
mod enroll;
mod pipelines;
mod push;
mod vectorflow;
