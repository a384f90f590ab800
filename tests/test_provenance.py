"""experiments.paper.provenance on a throwaway git repository."""

import subprocess

from experiments.paper import provenance


def _git(repo, *args):
  return subprocess.run(['git', *args], cwd=repo, check=True,
                        capture_output=True, text=True).stdout.strip()


def test_the_commit_is_read_once_so_a_page_does_not_dirty_the_next(
    tmp_path, monkeypatch):
  repo = str(tmp_path)
  _git(repo, 'init', '-q')
  (tmp_path / 'page.md').write_text('old\n')
  _git(repo, 'add', 'page.md')
  _git(repo, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'x')
  sha = _git(repo, 'rev-parse', '--short', 'HEAD')
  monkeypatch.setattr(provenance, 'REPO', repo)
  provenance.commit.cache_clear()
  try:
    assert provenance.commit() == sha
    (tmp_path / 'page.md').write_text('new\n')   # the first page, written
    assert provenance.commit() == sha            # the second page's header
    provenance.commit.cache_clear()              # a new process would see:
    assert provenance.commit() == sha + '-dirty'
  finally:
    provenance.commit.cache_clear()
