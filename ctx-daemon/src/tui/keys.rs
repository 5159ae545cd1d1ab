//! The key map. Kept apart from the state so that it can be read (and tested) as a table.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What a key asks for; [`crate::tui::State::apply`] carries it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    CycleSort,
    ToggleIsolated,
    TogglePause,
    /// `+`: a longer interval.
    Longer,
    /// `-`: a shorter interval.
    Shorter,
    ToggleHelp,
    /// Esc: closes the help; does nothing else, so a stray Esc never quits.
    Back,
    Up,
    Down,
    PageUp,
    PageDown,
    Top,
    Bottom,
    /// A key with no meaning of its own: it only closes the help.
    Other,
}

/// Maps a key event. Only presses count: terminals that report releases would otherwise act
/// twice. Modifier keys alone and releases map to nothing.
pub fn map(key: &KeyEvent) -> Option<Action> {
    if key.kind != KeyEventKind::Press {
        return None;
    }
    // Raw mode turns Ctrl-C into a key, not a SIGINT: it quits like `q`.
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return match key.code {
            KeyCode::Char('c') => Some(Action::Quit),
            KeyCode::Char('f') => Some(Action::PageDown),
            KeyCode::Char('b') => Some(Action::PageUp),
            _ => Some(Action::Other),
        };
    }
    Some(match key.code {
        KeyCode::Char('q' | 'Q') => Action::Quit,
        KeyCode::Char('s') => Action::CycleSort,
        KeyCode::Char('i') => Action::ToggleIsolated,
        KeyCode::Char('p' | ' ') => Action::TogglePause,
        // `=` is `+` without shift on US layouts.
        KeyCode::Char('+' | '=') => Action::Longer,
        KeyCode::Char('-' | '_') => Action::Shorter,
        KeyCode::Char('?' | 'h') | KeyCode::F(1) => Action::ToggleHelp,
        KeyCode::Esc => Action::Back,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Top,
        KeyCode::End | KeyCode::Char('G') => Action::Bottom,
        _ => Action::Other,
    })
}

#[cfg(test)]
mod tests {
    use ratatui::crossterm::event::KeyEventState;

    use super::*;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn documented_keys() {
        let table = [
            ('q', Action::Quit),
            ('s', Action::CycleSort),
            ('i', Action::ToggleIsolated),
            ('p', Action::TogglePause),
            ('+', Action::Longer),
            ('=', Action::Longer),
            ('-', Action::Shorter),
            ('?', Action::ToggleHelp),
            ('j', Action::Down),
            ('k', Action::Up),
            ('g', Action::Top),
            ('G', Action::Bottom),
        ];
        for (c, a) in table {
            assert_eq!(map(&press(KeyCode::Char(c))), Some(a), "key {c:?}");
        }
        assert_eq!(map(&press(KeyCode::Esc)), Some(Action::Back));
        assert_eq!(map(&press(KeyCode::PageDown)), Some(Action::PageDown));
        assert_eq!(map(&press(KeyCode::Char('x'))), Some(Action::Other));
    }

    #[test]
    fn ctrl_c_quits_and_ctrl_s_does_not_sort() {
        let ctrl = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL);
        assert_eq!(map(&ctrl('c')), Some(Action::Quit));
        assert_eq!(map(&ctrl('s')), Some(Action::Other));
    }

    #[test]
    fn releases_are_ignored() {
        let k = KeyEvent {
            code: KeyCode::Char('q'),
            modifiers: KeyModifiers::NONE,
            kind: KeyEventKind::Release,
            state: KeyEventState::NONE,
        };
        assert_eq!(map(&k), None);
    }
}
