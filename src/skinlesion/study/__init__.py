"""Reader studies: readers against the model, and readers with it, on a real database.

Read top-down:

- :mod:`skinlesion.study.store`    the study database (SQLAlchemy 2: studies, cases, readers, answers), SQLite (WAL) by
                                   path or PostgreSQL by URL; Alembic migrations run on open; one transaction per write
- :mod:`skinlesion.study.create`   a study from a dataset and a model: class-stratified (or named) cases with ground truth,
                                   the model's answer (its out-of-fold prediction where it trained on the image), tokens
- :mod:`skinlesion.study.reading`  what a reader sees and may do: the next case, locking an answer, the revision after
                                   the model's answer (assisted arm), the running score (education mode); REST and app
- :mod:`skinlesion.study.report`   per reader and pooled metrics with bootstrap intervals, Fleiss' kappa, the ROC figure
- :mod:`skinlesion.study.app_page` the Streamlit reading page (``?study=ID&token=TOKEN``)
- :mod:`skinlesion.study.cli`      ``skinlesion study create / invite / report``

The REST routes (``GET /v1/studies/{id}/next``, ``POST /v1/studies/{id}/answers``) live in
:mod:`skinlesion.serve.study_routes`.
"""
