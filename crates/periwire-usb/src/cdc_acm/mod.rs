//! CDC-ACM virtual serial port (work in progress).
