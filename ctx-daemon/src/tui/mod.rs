//! The full-screen `ctxtop` view, split so that each part can be tested on its own:
//!
//! * [`state`]: what is shown, updated from [`crate::model::Sample`]s and by key actions;
//!   sorting, filtering, scrolling and the interval steps live here. No terminal.
//! * [`render`]: a pure function from `&State` to a ratatui [`Buffer`](ratatui::buffer::Buffer).
//! * [`keys`]: the key map, from crossterm key events to [`keys::Action`]s.
//! * [`term`]: the terminal guard (raw mode and alternate screen, restored on drop, on a panic
//!   and on a signal).
//! * [`app`]: the loop that samples at the sample interval and stays responsive to keys.

pub mod app;
pub mod keys;
pub mod render;
pub mod state;
pub mod term;

pub use keys::Action;
pub use state::{Flow, SortKey, State};
