//! Reliable UDP multicast distribution of update files: sans-IO sender/receiver core and a socket2/tokio driver.
