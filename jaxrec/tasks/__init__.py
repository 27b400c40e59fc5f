"""The tasks the engine runs, by name; a model names its task (`Model.task`)."""

from jaxrec.tasks.ctr.task import CTR
from jaxrec.tasks.next_item.task import NEXT_ITEM
from jaxrec.tasks.retrieval.task import RETRIEVAL

TASKS = {task.name: task for task in (NEXT_ITEM, RETRIEVAL, CTR)}
