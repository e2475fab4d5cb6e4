"""docs/games.md: its runnable examples print what the page says they print."""

from docs_examples import check_page


def test_games_page_examples_print_their_documented_output():
    assert check_page("games.md") >= 2, "games.md lost its runnable examples"
