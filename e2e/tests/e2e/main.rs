//! End-to-end tests, one binary: the compose file, the local topology behind nginx, convergence
//! under faults, and the operator console in Chromium.

mod browser;
mod chaos;
mod compose;
mod topology;
