"""Public interface of the search index (being written)."""


def index_document(doc_id, text):
    raise NotImplementedError


def delete_document(doc_id):
    raise NotImplementedError
